"""How a subset is named: its markers against its siblings, or a known program it leads with.

``<l2 short name>_<top distinctive gene>``, a signature (``ISG``, ``T2ISG``, ``EGR1``) when the
top genes are a known program, or the plain l2 name for the main body of an l2. Markers are
ranked in blocks of at most ``_RANK_BLOCK_VALUES`` stored values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .lineage_sums import _LineageRNA, _log2fc, _Sums
from .markers import rank_markers

#: Interferon-stimulated (type I) genes: a cluster led by these is named ``..._ISG``.
ISG_GENES = frozenset(
    "ISG15 MX1 MX2 IFI6 IFI44 IFI44L IFIT1 IFIT2 IFIT3 IFIT5 RSAD2 HERC5 SIGLEC1 OAS1 OAS2 OAS3 "
    "OASL XAF1 IFI27 EPSTI1 LY6E ISG20 IFITM1 IFITM2 IFITM3 BST2 LAMP3 CMPK2 USP18".split()
)


#: Type II interferon (IFN-gamma induced) genes: ``..._T2ISG`` needs a core gene among them.
T2ISG_CORE = frozenset("GBP1 GBP2 GBP4 GBP5 CXCR3 STAT1 IRF1 CXCL9 CXCL10 IDO1 IFNG".split())


T2ISG_GENES = T2ISG_CORE | frozenset(
    "CCL5 COTL1 HLA-DRB1 HLA-DRA HLA-DPA1 HLA-DPB1 HLA-DQA1 HLA-DQB1 CD74 TAP1 PSMB9".split()
)


#: Immediate-early / NF-kB genes: a cluster led by these is named ``..._EGR1`` as in the study.
EGR1_GENES = frozenset(
    "EGR1 EGR2 EGR3 FOS FOSB JUN JUNB IER2 IER3 NFKBIA NFKBIZ TNFAIP3 DUSP1 KLF6 PPP1R15A "
    "NR4A1 NR4A2 ATF3 IL1B CCR1 SGK1 CXCL8 ZFP36".split()
)


_UNINFORMATIVE = re.compile(
    r"^(RP[LS]\d|RPLP|RPSA|MT-|MTRNR|HB[ABDEGMQZ]\d?$|MALAT1$|NEAT1$|XIST$|LINC|"
    r"AC\d{6}|AL\d{6}|AP\d{6}|ENSG)"
)


_N_TOP_RNA = 5


_N_TOP_PROT = 3


_MIN_PCT = 0.1  # markers are expressed in at least this fraction of the cluster


_SIGNATURE_TOP = 5  # top genes inspected for a known program


_MAIN_BODY_AUROC = 0.75  # a largest cluster whose best gene is below this is the main body


def _short_name(l2: str) -> str:
    """``CD14 Mono`` -> ``CD14``, ``CD8 TEM`` -> ``CD8_TEM``, ``B naive`` -> ``B_naive``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", l2.replace(" Mono", "")).strip("_")


def _plain_name(l2: str) -> str:
    """The main body's name: ``CD14 Mono`` -> ``CD14_Mono``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", l2).strip("_")


@functools.lru_cache(maxsize=200_000)
def _is_informative(name: str) -> bool:
    return _UNINFORMATIVE.match(name) is None


def _informative(features: Sequence) -> np.ndarray:
    """Whether each feature name is informative (not ribosomal, mitochondrial, lncRNA, ...)."""
    return np.fromiter((_is_informative(str(f)) for f in features), dtype=bool, count=len(features))


def _top_features(res: pd.DataFrame, group: str, names: pd.Series | None, n: int) -> pd.DataFrame:
    """The ``n`` best up-regulated informative features of ``group`` by AUROC."""
    r = res[(res["group"] == group) & (res["logfoldchange"] > 0) & (res["auroc"] > 0.5)]
    r = r[_informative(r["feature"])]
    r = r.sort_values(["auroc", "statistic"], ascending=False, kind="stable").head(n)
    if names is not None:
        r = r.assign(feature=names.reindex(r["feature"]).to_numpy())
    return r


def _signature(genes: Sequence[str]) -> str | None:
    """``T2ISG`` / ``ISG`` / ``EGR1`` when the top genes are that program, else None."""
    top = list(genes)[:_SIGNATURE_TOP]
    if sum(g in T2ISG_GENES for g in top) >= 2 and any(g in T2ISG_CORE for g in top):
        return "T2ISG"
    if sum(g in ISG_GENES for g in top) >= 2:
        return "ISG"
    if sum(g in EGR1_GENES for g in top) >= 3:
        return "EGR1"
    return None


def _gene_label(gene: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", gene)


@dataclass
class _Genes:
    """The features of a run: genes, or antibodies for a protein-only cohort.

    ``var`` (gene symbols or antibody names as index), ``uns`` (``log1p`` base),
    ``informative`` (features) mask, whether all values are >= 0, and ``linear``: values
    are compared by their difference (CLR / dsb), not as log1p of expression.
    """

    var: pd.DataFrame
    uns: dict
    informative: np.ndarray
    nonnegative: bool
    linear: bool = False


#: Stored values of the genes one :func:`rank_markers` call of `_rank_rna` ranks: the block's
#: copy (8 bytes a value) and the ranking's sort keys (16) stay near 200 MB at any cohort size.
_RANK_BLOCK_VALUES = 8_000_000


_EMPTY_RANKS = pd.DataFrame(columns=["group", "feature", "auroc", "statistic", "logfoldchange"])


def _gene_blocks(cols: np.ndarray, values: np.ndarray, limit: int) -> list[np.ndarray]:
    """``cols`` cut into consecutive blocks of at most ``limit`` stored ``values`` (or one gene)."""
    blocks, start, held = [], 0, 0
    for i, n in enumerate(values.tolist()):
        if held + n > limit and i > start:
            blocks.append(cols[start:i])
            start, held = i, 0
        held += n
    blocks.append(cols[start:])
    return blocks


def _rank_rna(
    x: _LineageRNA,
    genes: _Genes,
    local: np.ndarray,
    stats: _Sums,
    tested: list[int],
    reference: list[int],
) -> pd.DataFrame:
    """:func:`rank_markers` of clusters ``tested`` against the rest of ``reference`` (local ids).

    Only informative genes that can be a marker of a tested cluster are ranked: expressed in
    >= 10 % of its cells, with a mean (up to rounding) at least that of the rest. Each gene's
    statistics do not depend on the others, so the markers equal those of ranking all genes.
    Genes are ranked in blocks of at most `_RANK_BLOCK_VALUES` stored values (the cells x
    genes copy of one block at a time); the rows come back in :func:`rank_markers` order
    (group, then statistic descending, ties in gene order), without ``padj``.
    """
    pct = stats.nonzero / np.maximum(stats.size, 1.0)[:, None]
    keep = np.zeros(x.n_genes, dtype=bool)
    for c in tested:
        ok = pct[c] >= _MIN_PCT
        if genes.nonnegative:
            rest = [r for r in reference if r != c]
            mean_in = stats.total[c] / stats.size[c]
            mean_out = stats.total[rest].sum(axis=0) / stats.size[rest].sum()
            ok &= mean_in * (1 + 1e-6) >= mean_out
        keep |= ok
    cols = np.flatnonzero(keep & genes.informative)
    rows = np.flatnonzero(np.isin(local, reference))
    labels = pd.Categorical(local[rows].astype(str))
    nonzero = stats.nonzero[reference].sum(axis=0)
    frames = []
    for block in _gene_blocks(cols, nonzero[cols], _RANK_BLOCK_VALUES):
        # genes named by their column, so that the blocks merge in column order
        sub = ad.AnnData(
            x.take(rows, block, nonzero[block]),
            var=pd.DataFrame(index=block.astype(str)),
            uns=genes.uns,
        )
        sub.obs["c"] = labels
        frames.append(
            rank_markers(sub, "c", groups=[str(c) for c in tested], min_fraction=_MIN_PCT, n_jobs=1)
        )
    res = pd.concat(frames, ignore_index=True).drop(columns="padj")
    column = res["feature"].astype(np.int64).to_numpy()
    if genes.linear:  # rank_markers' fold change reads the values as log1p
        group = res["group"].astype(str).astype(np.int64).to_numpy()
        rest_total = stats.total[reference].sum(axis=0)
        rest_size = stats.size[reference].sum()
        mean_in = stats.total[group, column] / stats.size[group]
        mean_out = (rest_total[column] - stats.total[group, column]) / (
            rest_size - stats.size[group]
        )
        res["logfoldchange"] = _log2fc(mean_in, mean_out, True)
    order = np.lexsort((column, -res["statistic"].to_numpy(), res["group"].cat.codes.to_numpy()))
    res = res.iloc[order].reset_index(drop=True)
    res["feature"] = genes.var.index.to_numpy()[column[order]]
    return res


def _rank_prot(
    prot: tuple[np.ndarray, pd.DataFrame, pd.Series],
    local: np.ndarray,
    tested: list[int],
    reference: list[int],
) -> pd.DataFrame:
    """:func:`rank_markers` of the proteins of clusters ``tested`` against ``reference``."""
    rows = np.flatnonzero(np.isin(local, reference))
    values = prot[0] if rows.size == local.size else prot[0][rows]
    psub = ad.AnnData(values, var=prot[1])
    psub.obs["c"] = pd.Categorical(local[rows].astype(str))
    pres = rank_markers(psub, "c", groups=[str(c) for c in tested])
    return pres[pres["pct_in"] >= _MIN_PCT]


def _describe_lineage(
    x: _LineageRNA,
    genes: _Genes,
    prot: tuple[np.ndarray, pd.DataFrame, pd.Series] | None,
    local: np.ndarray,
    stats: _Sums | None,
    parents: list[str],
) -> list[dict]:
    """Markers against l2 siblings (or the lineage when alone) and a base name per cluster.

    ``x`` the lineage's log-normalised RNA, ``prot`` the
    lineage's proteins, ``local`` cluster 0..k-1 of each cell, ``stats`` their sums (None
    when k is 1), ``parents`` their l2. Clusters alone in their l2 are ranked together
    against the whole lineage. Returns, in naming order, ``cluster, l2, base, rna_markers,
    protein_markers``; names are made unique by the caller.
    """
    k = len(parents)
    by_parent: dict[str, list[int]] = {}
    for c, parent in enumerate(parents):
        by_parent.setdefault(parent, []).append(c)
    sizes = np.bincount(local, minlength=k)
    everyone = list(range(k))
    singles = [cids[0] for cids in by_parent.values() if len(cids) == 1]
    res_single = pres_single = None
    if k > 1 and singles:
        res_single = _rank_rna(x, genes, local, stats, singles, everyone)
        if prot is not None:
            pres_single = _rank_prot(prot, local, singles, everyone)
    out = []
    for parent, cids in by_parent.items():
        if len(cids) > 1:
            res = _rank_rna(x, genes, local, stats, cids, cids)
            pres = None if prot is None else _rank_prot(prot, local, cids, cids)
        elif k > 1:
            res, pres = res_single, pres_single
        else:
            res, pres = _EMPTY_RANKS, None
        largest = max(cids, key=lambda c: (sizes[c], -c))
        for c in sorted(cids, key=lambda c: (-sizes[c], c)):
            top = _top_features(res, str(c), None, _N_TOP_RNA) if len(res) else res
            genes_top = top["feature"].astype(str).tolist()
            best = float(top["auroc"].iloc[0]) if len(top) else 0.5
            if len(cids) == 1 or (c == largest and best < _MAIN_BODY_AUROC):
                base = _plain_name(parent)
            else:
                label = _signature(genes_top) or (
                    _gene_label(genes_top[0]) if genes_top else "other"
                )
                base = f"{_short_name(parent)}_{label}"
            ptop = (
                _top_features(pres, str(c), prot[2], _N_TOP_PROT)["feature"].tolist()
                if pres is not None
                else []
            )
            out.append(
                {
                    "cluster": c,
                    "l2": parent,
                    "base": base,
                    "rna_markers": ";".join(genes_top),
                    "protein_markers": ";".join(ptop),
                }
            )
    return out
