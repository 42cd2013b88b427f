"""Feature names: gene symbols and ids, protein aliases, isotype controls, modality rules.

Every reader builds its ``var`` tables here, so that genes and antibodies are named the same
way whatever file they came from:

- genes: ``var_names`` are symbols without a genome prefix (``hg19_CD3E`` -> ``CD3E``).
  Ensembl gene ids (``ENSG00000121410``, with or without a version suffix ``.12``; other
  species' ``ENS<species>G`` ids are recognised too) are mapped to symbols offline with the
  shipped gene table (``resources/genes_human.tsv.gz``: NCBI Entrez Gene via org.Hs.eg.db;
  human ids only); an id that does not map keeps its id without the version. Names are made
  unique like anndata's ``var_names_make_unique`` (``name``, ``name-1``, ``name-2``...);
  ``var["feature_name_raw"]`` keeps the name as the file gave it and ``var["gene_ids"]`` the
  gene id (the file's id column, else the Ensembl id as the name gave it). Symbols and ids
  may be mixed in one file;
- proteins: ``var_names`` are the names as the panel gave them (made unique if needed);
  ``var["alias"]`` is a cleaned target name (``MHCII (HLA-DR)`` -> ``HLA-DR``,
  ``CD3_TotalSeqB`` -> ``CD3``, ``CD4:RPA-T4|CD4|AHS0032|pAbO`` -> ``CD4``, ``PD-1 (CD279)``
  -> ``CD279``) and ``var["isotype"]`` flags isotype controls.

Which modality a file's features belong to (`plan_from_types`, `plan_from_names`,
`select_declared`), in order:

1. the file declares it: Cell Ranger's feature types (``Gene Expression`` -> ``rna``,
   ``Antibody Capture`` -> ``prot``, ``Multiplexing Capture`` -> ``hto``, in the h5, the
   MTX ``features.tsv`` or an h5ad's ``var["feature_types"]``), an h5mu's modality names,
   per-modality MTX file names, BD Rhapsody's AbSeq (``pAbO``) column names; Cell Ranger 2
   files and MTX features files without a type column hold Gene Expression (`plan_single`);
2. else, for a single matrix without feature types (an h5ad without
   ``var["feature_types"]``), the rule: a feature is *gene-like* when it is an Ensembl
   gene id (any species, mapped or not) or a known human gene symbol (after removing a
   genome prefix, case-insensitive). At least 50 % gene-like features -> ``rna``; else at
   most 1,000 features -> ``prot`` (an antibody panel such as ``CD3_PROT``, ``CD19``...);
   else ``rna``. Ensembl ids are thus never taken for antibodies.

The sample sheet's ``modality`` column (``rna`` or ``prot``) overrides the rule for a single
matrix without feature types; for a file that declares its features it must name a modality
the file has, and only that modality is read. Each decision is a short text
(``"rna: 1,000 Ensembl ids, 982 mapped to symbols (rule: >= 50 % genes)"``, ``"rna + prot:
Cell Ranger feature types"``, ``"prot: samples.csv modality column"``) that the readers keep in
each modality's ``uns["modality_rule"]``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from sccohort.cohort import MODALITIES
from sccohort.errors import InputError
from sccohort.io.protein_names import is_isotype, protein_alias

#: Cell Ranger ``feature_type`` -> sccohort modality name.
FEATURE_TYPE_TO_MODALITY = {
    "Gene Expression": "rna",
    "Antibody Capture": "prot",
    "Multiplexing Capture": "hto",
}
#: Values of the sample sheet's ``modality`` column.
MODALITY_CHOICES = MODALITIES
#: ``uns`` key of each modality read: the text saying how its features were assigned.
MODALITY_RULE_KEY = "modality_rule"
#: ``uns`` key of a sample's ``rna`` modality: how its genes were named (`GeneIds.describe`).
GENE_IDS_KEY = "gene_ids"
#: Kinds of the gene table's core genes (scripts/make_gene_table.py); the others map ids only.
CORE_GENE_KINDS = ("protein_coding", "MT", "TR_IG", "lncRNA")
#: The rule: a matrix with fewer gene-like features than this share is not RNA...
GENE_SHARE = 0.5
#: ... and is read as an antibody panel when it has at most this many features.
MAX_PANEL_FEATURES = 1000

# ENSG00000121410, ENSG00000121410.12, ENSMUSG00000000001.4, ENSG00000182378.14_PAR_Y
_ENSEMBL_GENE = re.compile(r"^(?P<base>ENS[A-Z]{0,6}G\d{11})(?:\.\d+)?(?:_PAR_Y)?$")
_HUMAN_ENSEMBL = re.compile(r"^ENSG\d{11}$")
_T = TypeVar("_T")

# hg19_, GRCh38_, GRCh38-, mm10___, hg19-, GRCm39_ (one prefix, any run of _ or -).
_GENOME_PREFIX = re.compile(r"^(?:hg\d+|GRCh\d+|GRCm\d+|mm\d+)(?:[_-]+)(?=.)", re.IGNORECASE)


def strip_genome_prefix(name: str) -> str:
    """Remove a Cell Ranger genome prefix from a gene name.

    Parameters
    ----------
    name
        A gene name such as ``hg19_CD3E``, ``GRCh38_MT-CO1``, ``GRCh38-CD4`` or ``mm10___Cd8a``.

    Returns
    -------
    The name without the prefix (``CD3E``); names without one are returned unchanged.
    """
    return _GENOME_PREFIX.sub("", name, count=1)


def make_unique(names: Iterable[str], join: str = "-") -> list[str]:
    """Make names unique the way anndata's ``var_names_make_unique`` does.

    The first occurrence keeps its name; later ones get ``-1``, ``-2``... (skipping any
    suffixed name that already exists).

    Parameters
    ----------
    names
        Names, possibly repeated (length n).

    Returns
    -------
    list of n unique names, in the same order.
    """
    names = [str(n) for n in names]
    seen = set(names)
    counts: dict[str, int] = {}
    out = []
    used: set[str] = set()
    for name in names:
        if name not in used:
            used.add(name)
            out.append(name)
            continue
        k = counts.get(name, 0)
        while True:
            k += 1
            candidate = f"{name}{join}{k}"
            if candidate not in seen and candidate not in used:
                break
        counts[name] = k
        used.add(candidate)
        out.append(candidate)
    return out


# ----------------------------------------------------------------------------- gene ids


@cache
def gene_table() -> pd.DataFrame:
    """The shipped human gene table (read once).

    Returns
    -------
    DataFrame with columns ``symbol`` (unique), ``gene_id`` (Ensembl), ``kind`` (see
    `CORE_GENE_KINDS`; other kinds are Entrez gene types of genes kept to map ids) and
    ``other_ids`` (further Ensembl ids of the gene, ``;``-separated, or ``""``).

    Examples
    --------
    >>> from sccohort.io import gene_table
    >>> table = gene_table()
    >>> table.columns.tolist()[:3], len(table) > 30000
    (['symbol', 'gene_id', 'kind'], True)
    """
    ref = resources.files("sccohort.resources").joinpath("genes_human.tsv.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as fh:
        table = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    if "other_ids" not in table:
        table["other_ids"] = ""
    return table


@cache
def human_symbols() -> frozenset[str]:
    """Upper-case symbols of the gene table (for the modality rule)."""
    return frozenset(gene_table()["symbol"].str.upper())


@cache
def ensembl_symbols() -> dict[str, str]:
    """Human Ensembl gene id (no version) -> symbol.

    A gene's main id wins over another gene's alternative id, and core genes over the others.
    """
    table = gene_table()
    core = table["kind"].isin(CORE_GENE_KINDS).to_numpy()
    lookup: dict[str, str] = {}
    for rows in (table[core], table[~core]):
        for gene_id, symbol in zip(rows["gene_id"], rows["symbol"], strict=True):
            lookup.setdefault(gene_id, symbol)
    for rows in (table[core], table[~core]):
        for others, symbol in zip(rows["other_ids"], rows["symbol"], strict=True):
            for gene_id in filter(None, others.split(";")):
                lookup.setdefault(gene_id, symbol)
    return lookup


def ensembl_gene_id(name: str) -> str | None:
    """The Ensembl gene id a feature name is, without its version, or None.

    Parameters
    ----------
    name
        A feature name, e.g. ``ENSG00000121410.12`` (-> ``ENSG00000121410``),
        ``ENSMUSG00000000001`` (-> itself) or ``CD3E`` (-> None).
    """
    match = _ENSEMBL_GENE.match(name.strip())
    return None if match is None else match["base"]


@dataclass(frozen=True)
class GeneIds:
    """How the genes of a file are named: symbols, Ensembl ids, or both.

    Attributes
    ----------
    n_genes
        Features.
    n_ensembl
        Of them, Ensembl gene ids (any species).
    n_mapped
        Of the Ensembl ids, those mapped to a symbol (human ids in the gene table).
    n_known
        Of the other names, known human gene symbols.
    """

    n_genes: int
    n_ensembl: int
    n_mapped: int
    n_known: int

    @property
    def kind(self) -> str:
        """``"symbols"``, ``"ensembl"`` (every name an Ensembl id) or ``"mixed"``."""
        if self.n_ensembl == 0:
            return "symbols"
        return "ensembl" if self.n_ensembl == self.n_genes else "mixed"

    def describe(self) -> str:
        """A short text: ``"symbols"``, ``"ensembl: 982/1,000 mapped"`` or ``"mixed: ..."``.

        ``"mixed: 500 symbols, 500 Ensembl ids (480 mapped)"`` for a mix.
        """
        if self.kind == "symbols":
            return "symbols"
        if self.kind == "ensembl":
            return f"ensembl: {self.n_mapped:,}/{self.n_ensembl:,} mapped"
        return (
            f"mixed: {self.n_genes - self.n_ensembl:,} symbols, {self.n_ensembl:,} Ensembl ids "
            f"({self.n_mapped:,} mapped)"
        )


def _gene_names(names: Sequence[str]) -> tuple[list[str], list[str], GeneIds]:
    """Symbols, Ensembl ids and their counts (`GeneIds`) of gene names.

    An Ensembl id that does not map gives the id without version as its symbol; names that
    are not Ensembl ids give ``""`` as their id.
    """
    lookup = ensembl_symbols()
    known = human_symbols()
    symbols, ids = [], []
    n_ensembl = n_mapped = n_known = 0
    for name in names:
        name = strip_genome_prefix(str(name))
        base = ensembl_gene_id(name)
        if base is None:
            symbols.append(name)
            ids.append("")
            n_known += name.upper() in known
            continue
        n_ensembl += 1
        symbol = lookup.get(base) if _HUMAN_ENSEMBL.match(base) else None
        n_mapped += symbol is not None
        symbols.append(symbol or base)
        ids.append(name.strip())
    return symbols, ids, GeneIds(len(symbols), n_ensembl, n_mapped, n_known)


def gene_ids_of(names: Sequence[str]) -> GeneIds:
    """How gene names as a file gave them are named (`GeneIds`).

    Parameters
    ----------
    names
        Gene names (symbols, Ensembl ids, possibly with a genome prefix).
    """
    return _gene_names(names)[2]


def gene_var(names: Sequence[str], gene_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``var`` table of an RNA modality.

    Parameters
    ----------
    names
        Gene names as the file gave them (length n_genes): symbols, possibly with a genome
        prefix, or Ensembl gene ids (with or without a version), or a mix.
    gene_ids
        Gene ids (e.g. Ensembl), same length, or None.

    Returns
    -------
    DataFrame indexed by unique, prefix-free symbols (Ensembl ids mapped to symbols with the
    shipped gene table; an id that does not map: the id without its version), with columns
    ``feature_name_raw`` and ``gene_ids`` (``gene_ids`` if given, else the Ensembl ids as
    the names gave them, ``""`` for names that are symbols; absent when neither).
    """
    raw = [str(n) for n in names]
    symbols, ids, counts = _gene_names(raw)
    var = pd.DataFrame({"feature_name_raw": raw}, index=pd.Index(make_unique(symbols)))
    if gene_ids is not None:
        var["gene_ids"] = np.asarray([str(g) for g in gene_ids], dtype=object)
    elif counts.n_ensembl:
        var["gene_ids"] = np.asarray(ids, dtype=object)
    return var


def protein_var(names: Sequence[str], ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``var`` table of a protein (antibody) modality.

    Parameters
    ----------
    names
        Antibody names as the panel gave them (length n_antibodies).
    ids
        Feature ids (Cell Ranger's ``id`` column), same length, or None.

    Returns
    -------
    DataFrame indexed by the (stripped, unique) names, with columns ``feature_name_raw``,
    ``alias`` (see `protein_alias`), ``isotype`` (bool) and, if given, ``feature_ids``.
    """
    raw = [str(n) for n in names]
    var = pd.DataFrame(
        {
            "feature_name_raw": raw,
            "alias": [protein_alias(n) for n in raw],
            "isotype": np.array([is_isotype(n) for n in raw], dtype=bool),
        },
        index=pd.Index(make_unique(n.strip() for n in raw)),
    )
    if ids is not None:
        var["feature_ids"] = np.asarray([str(i) for i in ids], dtype=object)
    return var


def hto_var(names: Sequence[str]) -> pd.DataFrame:
    """The ``var`` table of a hashtag modality: unique names, raw names kept.

    Parameters
    ----------
    names
        Hashtag names (length n_hashtags).

    Returns
    -------
    DataFrame indexed by unique names, with column ``feature_name_raw``.
    """
    raw = [str(n) for n in names]
    return pd.DataFrame(
        {"feature_name_raw": raw}, index=pd.Index(make_unique(n.strip() for n in raw))
    )


def modality_var(
    modality: str, names: Sequence[str], ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """The ``var`` table of a modality: `gene_var`, `protein_var` or `hto_var`.

    Parameters
    ----------
    modality
        ``rna``, ``prot`` or ``hto``.
    names
        Feature names as the file gave them.
    ids
        Feature ids (the file's id column), or None.
    """
    if modality == "rna":
        return gene_var(names, ids)
    if modality == "prot":
        return protein_var(names, ids)
    return hto_var(names)


# ----------------------------------------------------------------------------- modalities


@dataclass(frozen=True)
class ModalityPlan:
    """Which features of a matrix go to which modality, and why.

    Attributes
    ----------
    columns
        ``modality -> feature indices`` (int arrays, in feature order), modalities in the
        order found.
    rule
        The decision as a short text (see the module docstring).
    """

    columns: dict[str, np.ndarray]
    rule: str


def check_modality(value: Any, *, file: Any = None, sample: str | None = None) -> str | None:
    """The sample sheet's ``modality`` value, normalised: ``"rna"``, ``"prot"`` or None.

    None, NaN and ``""`` mean "not given". Anything else raises `InputError`.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if text not in MODALITY_CHOICES:
        raise InputError(
            f"unknown modality '{value}'",
            file=file,
            column="modality",
            sample=sample,
            hint=f"Use one of {', '.join(MODALITY_CHOICES)}, or leave it empty to let the "
            "file's feature types (or the rule) decide",
        )
    return text


def _joined(modalities: Iterable[str]) -> str:
    return " + ".join(modalities)


def select_declared(
    mods: Mapping[str, _T], source: str, modality: str | None = None, *, file: Any = None
) -> tuple[dict[str, _T], str]:
    """Keep the modalities a file declares (all, or the one the sample sheet names).

    Parameters
    ----------
    mods
        ``modality -> anything`` as the file declares them (feature types, modality names...).
    source
        How the file declares them (``"Cell Ranger feature types"``), for the decision text.
    modality
        The sample sheet's ``modality`` (None: keep all).
    file
        The file, for the error.

    Returns
    -------
    The kept ``mods`` and the decision text (``"rna + prot: <source>"``, or ``"prot:
    samples.csv modality column (the file has rna + prot by <source>)"``).

    Raises
    ------
    InputError
        ``modality`` is not among the file's modalities.
    """
    found = _joined(mods) or "nothing"
    if modality is None:
        return dict(mods), f"{found}: {source}"
    if modality not in mods:
        raise InputError(
            f"the sample sheet's modality is '{modality}' but the file holds {found} (by {source})",
            file=file,
            column="modality",
            hint="For a file that declares its features, leave modality empty or name one "
            "of its modalities",
        )
    text = f"{modality}: samples.csv modality column (the file has {found} by {source})"
    return {modality: mods[modality]}, text


def plan_from_types(
    feature_types: Sequence[str],
    source: str,
    modality: str | None = None,
    *,
    file: Any = None,
) -> ModalityPlan:
    """Split features by Cell Ranger feature type.

    Types not in `FEATURE_TYPE_TO_MODALITY` are left out.

    Parameters
    ----------
    feature_types
        One per feature (``"Gene Expression"``, ``"Antibody Capture"``...).
    source, modality, file
        As in `select_declared`.
    """
    types = np.asarray([str(t) for t in feature_types], dtype=object)
    found = {}
    for feature_type, name in FEATURE_TYPE_TO_MODALITY.items():
        idx = np.flatnonzero(types == feature_type)
        if idx.size:
            found[name] = idx
    columns, rule = select_declared(found, source, modality, file=file)
    return ModalityPlan(columns, rule)


def plan_single(
    n_features: int, holds: str, source: str, modality: str | None = None
) -> ModalityPlan:
    """A single matrix that holds one modality by its format (a Cell Ranger 2 gene matrix).

    ``modality`` (the sample sheet's) overrides ``holds``.
    """
    columns = np.arange(n_features)
    if modality is not None:
        return ModalityPlan({modality: columns}, f"{modality}: samples.csv modality column")
    return ModalityPlan({holds: columns}, f"{holds}: {source}")


def plan_from_names(names: Sequence[str], modality: str | None = None) -> ModalityPlan:
    """The rule for a single matrix without feature types (see the module docstring).

    Parameters
    ----------
    names
        Feature names as the file gave them.
    modality
        The sample sheet's ``modality``: what the matrix holds (overrides the rule).

    Returns
    -------
    ModalityPlan with one modality holding every feature; ``rule`` e.g. ``"rna: 1,000
    Ensembl ids, 982 mapped to symbols (rule: >= 50 % genes)"`` or ``"prot: 9 features, 3
    known gene symbols (rule: < 50 % genes, <= 1,000 features)"``.
    """
    columns = np.arange(len(names))
    if modality is not None:
        return ModalityPlan({modality: columns}, f"{modality}: samples.csv modality column")
    ids = gene_ids_of(names)
    n = ids.n_genes
    share = f"{GENE_SHARE * 100:.0f} % genes"
    if n and ids.n_ensembl + ids.n_known >= GENE_SHARE * n:
        chosen, why = "rna", f">= {share}"
    elif 0 < n <= MAX_PANEL_FEATURES:
        chosen, why = "prot", f"< {share}, <= {MAX_PANEL_FEATURES:,} features"
    else:
        chosen, why = "rna", f"> {MAX_PANEL_FEATURES:,} features" if n else "no features"
    if ids.kind == "ensembl":
        found = f"{n:,} Ensembl ids, {ids.n_mapped:,} mapped to symbols"
    elif ids.kind == "mixed":
        found = (
            f"{n:,} features, {ids.n_ensembl:,} Ensembl ids ({ids.n_mapped:,} mapped to "
            f"symbols) and {ids.n_known:,} known gene symbols"
        )
    else:
        found = f"{n:,} features, {ids.n_known:,} known gene symbols"
    return ModalityPlan({chosen: columns}, f"{chosen}: {found} (rule: {why})")


def set_rule(mods: Mapping[str, Any], rule: str) -> None:
    """Store the decision text in ``uns["modality_rule"]`` of every modality (AnnData)."""
    for adata in mods.values():
        adata.uns[MODALITY_RULE_KEY] = rule
