"""Offline PBMC cell-type annotation (Azimuth / Hao 2021 vocabulary) from shipped marker tables.

Two tables ship with the package (``resources/pbmc_markers_rna.csv`` and
``resources/pbmc_markers_protein.csv``; columns ``level, label, parent, program,
gene|protein, direction, weight``). A *label* is scored by one or more *programs* (a
heterogeneous label, e.g. l1 ``DC`` = cDC, cDC1, pDC or ASDC, takes its best program).
A program's score on a cell is the weighted mean of its ``+`` markers minus the weighted
mean of its ``-`` markers, each marker scaled to [0, 1] between its 1st and 99.5th
percentile over the cells being labelled. With both modalities the protein score weighs
0.6 and the RNA score 0.4 (protein decides lineages, RNA refines); a program with markers
in only one modality uses that one.

Cells are labelled hierarchically: l1 over all cells, then l2 among the cells of each l1
label (markers re-scaled within that group). For each level a cell's evidence is the
average of its own scores and those of its neighbours on the WNN graph, blended half and
half with the mean score of its cluster: a cell takes its cluster's label unless its own
evidence clearly disagrees (rare types that share a cluster keep their own label).
Confidence is the softmax probability of the chosen label (temperature 0.1 in score
units); below ``min_confidence`` the cell is ``unassigned``.

The l1 label of each l2 label follows Azimuth: Mono (CD14 Mono, CD16 Mono); DC (cDC1,
cDC2, pDC, ASDC); B (B naive, B intermediate, B memory, Plasmablast); CD4 T (CD4 Naive,
CD4 TCM, CD4 TEM, CD4 CTL, Treg); CD8 T (CD8 Naive, CD8 TCM, CD8 TEM); other T (MAIT,
gdT, dnT); NK (NK, NK_CD56bright); other (HSPC, Platelet, Eryth, ILC, Proliferating).
Azimuth splits proliferating cells by lineage at l2 (CD4/CD8/NK Proliferating); here
they are one ``Proliferating`` label under ``other``.

Panels that lack markers (targeted RNA panels, antibody panels of a few targets): a label is
*callable* when one of its programs has a *distinctive* ``+`` marker in the data (a marker
it weighs more than any competing label does: CD14 for monocytes, not CD3 for MAIT cells)
and at least a quarter of its ``+`` marker weight (`label_coverage`). Labels that are not
callable are never assigned, and the cells of a level where some label is not callable get
a label only on positive evidence (blended score > 0), since the cells of the missing labels
have nowhere else to go. Where fewer than two children of an l1 label are callable, its cells
keep the l1 name as their l2 (e.g. ``B`` for a panel without IgD / CD27).
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.io.protein_names import protein_alias
from sccohort.pp.store import rna_columns, store_of

UNASSIGNED = "unassigned"
L1_LABELS = ("Mono", "DC", "B", "CD4 T", "CD8 T", "other T", "NK", "other")
#: weight of each modality's program score when both are present
MODALITY_WEIGHTS = {"prot": 0.6, "rna": 0.4}
_FEATURE_COLUMN = {"rna": "gene", "prot": "protein"}
_TABLE_FILE = {"rna": "pbmc_markers_rna.csv", "prot": "pbmc_markers_protein.csv"}
_TEMPERATURE = 0.1
_CLUSTER_BLEND = 0.5
_OVERRIDE_MARGIN = 0.15
#: background percentile: lineage markers are mostly negative over all cells, while within
#: an l1 group a state marker is often positive in most cells (CD16 on NK cells)
_L1_LOW, _L2_LOW = 25.0, 2.0
#: Share of a program's ``+`` marker weight that must be in the data for it to be callable.
MIN_COVERAGE = 0.25


def load_markers(modality: str, path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a marker table.

    Parameters
    ----------
    modality
        ``"rna"`` (column ``gene``) or ``"prot"`` (column ``protein``, antibody aliases).
    path
        A CSV with the shipped table's columns; ``None`` reads the shipped table.

    Returns
    -------
    DataFrame with columns ``level, label, parent, program, feature, direction, weight``
    (``feature`` renamed from ``gene``/``protein``; ``weight`` float, signed by direction).

    Examples
    --------
    >>> from sccohort.tl import load_markers
    >>> load_markers("rna").columns.tolist()
    ['level', 'label', 'parent', 'program', 'feature', 'direction', 'weight']
    """
    if modality not in _FEATURE_COLUMN:
        raise InputError(
            f"unknown modality {modality!r}", hint="use 'rna' or 'prot'", key="modality"
        )
    if path is None:
        ref = resources.files("sccohort.resources") / _TABLE_FILE[modality]
        with resources.as_file(ref) as file:
            path = Path(file)
            table = pd.read_csv(file, dtype=str, keep_default_na=False)
    else:
        path = Path(path)
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    feature = _FEATURE_COLUMN[modality]
    required = ["level", "label", "parent", "program", feature, "direction", "weight"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(
            f"marker table lacks column(s) {', '.join(missing)}",
            file=path,
            row=1,
            hint=f"the header must be: {','.join(required)}",
        )
    for i, row in table.iterrows():
        line = int(i) + 2
        if row["level"] not in ("l1", "l2"):
            raise InputError(
                f"level {row['level']!r} is not l1 or l2", file=path, row=line, column="level"
            )
        if row["direction"] not in ("+", "-"):
            raise InputError(
                f"direction {row['direction']!r} is not + or -",
                file=path,
                row=line,
                column="direction",
            )
        try:
            weight = float(row["weight"])
        except ValueError:
            weight = -1.0
        if not weight > 0:
            raise InputError(
                f"weight {row['weight']!r} is not a positive number",
                file=path,
                row=line,
                column="weight",
            )
        if row["level"] == "l2" and not row["parent"]:
            raise InputError("an l2 row needs its l1 parent", file=path, row=line, column="parent")
        if not row["label"] or not row[feature]:
            raise InputError(
                "empty label or marker", file=path, row=line, hint="fill in label and marker"
            )
    table = table.rename(columns={feature: "feature"})
    if modality == "prot":  # named as the data's aliases are ("TCR Va7.2" -> "TCRVa7.2")
        table["feature"] = table["feature"].map(protein_alias)
    table["program"] = table["program"].where(table["program"] != "", table["label"])
    table["weight"] = table["weight"].astype(float) * np.where(table["direction"] == "+", 1.0, -1.0)
    return table[["level", "label", "parent", "program", "feature", "direction", "weight"]]


def _feature_columns(adata, modality: str) -> pd.Series:
    """Map marker names to column positions: gene symbols, or protein aliases (no isotypes)."""
    if modality == "rna":
        return pd.Series(np.arange(adata.n_vars), index=adata.var_names.astype(str))
    names = adata.var["alias"] if "alias" in adata.var else adata.var_names.to_series()
    keep = ~adata.var["isotype"].to_numpy(bool) if "isotype" in adata.var else slice(None)
    positions = pd.Series(np.arange(adata.n_vars), index=names.astype(str).to_numpy())[keep]
    return positions[~positions.index.duplicated()]


def _scaled(adata, rows: np.ndarray, columns: np.ndarray, low: float) -> np.ndarray:
    """Cells ``rows`` x markers ``columns`` of ``.X``, each scaled to [0, 1].

    0 is the ``low`` percentile (the background), 1 the 99.5th percentile, but never less
    than six background standard deviations (from the 2nd-25th percentiles) above the
    25th percentile, so that a marker no cell expresses scores near 0.
    """
    matrix = adata.X
    if matrix is None or sp.issparse(matrix):  # the markers' columns first (or RNA on disk)
        x = rna_columns(adata, columns)
        x = (x if np.array_equal(rows, np.arange(adata.n_obs)) else x[rows]).toarray()
    else:
        x = np.asarray(matrix)[np.ix_(rows, columns)]
    x = x.astype(np.float64)
    if x.shape[0] == 0:
        return x
    q2, q25, lo, hi = np.percentile(x, [2, 25, low, 99.5], axis=0)
    hi = np.maximum(hi, q25 + 6 * (q25 - q2) / 1.38)
    flat = hi - lo <= 1e-6
    hi[flat] = x.max(axis=0)[flat]
    span = hi - lo
    span[span <= 1e-6] = np.inf
    return np.clip((x - lo) / span, 0.0, 1.0)


def _marker_columns(rna: AnnData, table: pd.DataFrame) -> AnnData:
    """All cells x the marker genes of ``table`` present in ``rna``, in memory.

    For RNA kept on disk: read once for every level, not once per level and parent.
    """
    columns = np.flatnonzero(rna.var_names.astype(str).isin(table["feature"]))
    return AnnData(
        X=rna_columns(rna, columns),
        obs=pd.DataFrame(index=rna.obs_names),
        var=pd.DataFrame(index=rna.var_names[columns]),
    )


def _program_scores(
    mods: dict[str, AnnData],
    obs_names: pd.Index,
    table: pd.DataFrame,
    modality: str,
    rows: np.ndarray,
    low: float,
) -> dict[tuple[str, str], np.ndarray]:
    """Score every (label, program) with a ``+`` marker present in ``modality``."""
    adata = mods[modality]
    positions = _feature_columns(adata, modality)
    present = table[table["feature"].isin(positions.index)]
    if present.empty:
        return {}
    features = pd.unique(present["feature"])
    mod_rows = adata.obs_names.get_indexer(obs_names[rows])
    if (mod_rows < 0).any():
        raise InputError(
            f"{int((mod_rows < 0).sum())} cells of the cohort are missing from mod['{modality}']",
            key=modality,
            hint="annotate a MuData whose modalities hold the same cells (intersect_obs)",
        )
    scaled = _scaled(adata, mod_rows, positions[features].to_numpy(), low)
    index = {f: i for i, f in enumerate(features)}
    scores = {}
    for key, group in present.groupby(["label", "program"], sort=False):
        pos = group[group["weight"] > 0]
        if pos.empty:
            continue
        score = scaled[:, [index[f] for f in pos["feature"]]] @ pos["weight"].to_numpy()
        score /= pos["weight"].sum()
        neg = group[group["weight"] < 0]
        if not neg.empty:
            w = -neg["weight"].to_numpy()
            score -= scaled[:, [index[f] for f in neg["feature"]]] @ w / w.sum()
        scores[key] = score
    return scores


def _label_scores(
    mods: dict[str, AnnData],
    obs_names: pd.Index,
    tables: dict[str, pd.DataFrame],
    labels: list[str],
    rows: np.ndarray,
    low: float,
) -> np.ndarray:
    """Cells ``rows`` x ``labels``: each label's best program, modalities blended."""
    per_mod = {m: _program_scores(mods, obs_names, t, m, rows, low) for m, t in tables.items()}
    out = np.full((len(rows), len(labels)), -np.inf)
    for j, label in enumerate(labels):
        programs = {p for scores in per_mod.values() for (lab, p) in scores if lab == label}
        for program in programs:
            found = {m: s[(label, program)] for m, s in per_mod.items() if (label, program) in s}
            total = sum(MODALITY_WEIGHTS[m] for m in found)
            score = sum(MODALITY_WEIGHTS[m] * s for m, s in found.items()) / total
            out[:, j] = np.maximum(out[:, j], score)
    return out


def label_coverage(tables: dict[str, pd.DataFrame], mods: dict[str, AnnData]) -> pd.DataFrame:
    """How well the data cover each label's markers, and whether the label is callable.

    Parameters
    ----------
    tables
        ``{"rna": table, "prot": table}`` as returned by `load_markers`.
    mods
        The modalities present (``var_names`` gene symbols; ``var["alias"]`` antibodies).

    Returns
    -------
    pandas.DataFrame
        One row per (level, label): ``level, label, parent, callable`` (bool),
        ``marker_coverage`` (the best program's share of ``+`` marker weight in the data),
        ``program`` (that program, modality-prefixed), ``distinctive`` (its distinctive ``+``
        markers present) and ``missing_markers`` (its ``+`` markers absent), ";"-joined.

    Examples
    --------
    >>> from sccohort.tl import label_coverage, load_markers
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> coverage = label_coverage({"rna": load_markers("rna")}, {"rna": mdata["rna"]})
    >>> coverage.columns.tolist()[:5]
    ['level', 'label', 'parent', 'callable', 'marker_coverage']
    """
    rows = []
    for modality, table in tables.items():
        present = (
            set(_feature_columns(mods[modality], modality).index) if modality in mods else set()
        )
        for (level, parent), group in table.groupby(["level", "parent"], sort=False):
            # each label's strongest weight for each marker, - markers as negative weights
            signed = (
                group.groupby(["feature", "label"])["weight"]
                .agg(lambda w: w.max() if (w > 0).any() else w.min())
                .unstack(fill_value=0.0)
            )
            plus = group[group["weight"] > 0]
            for (label, program), markers in plus.groupby(["label", "program"], sort=False):
                own = group[(group["label"] == label) & (group["program"] == program)]
                distinctive = _distinctive(markers, own, label, signed, present)
                here = markers["feature"].isin(present).to_numpy()
                coverage = float(markers["weight"][here].sum() / markers["weight"].sum())
                rows.append(
                    {
                        "level": level, "label": label, "parent": parent,
                        "program": f"{modality}:{program}",
                        "callable": bool(distinctive) and coverage >= MIN_COVERAGE,
                        "marker_coverage": coverage,
                        "distinctive": ";".join(distinctive),
                        "missing_markers": ";".join(markers["feature"][~here]),
                    }
                )  # fmt: skip
    columns = ["level", "label", "parent", "callable", "marker_coverage", "program",
               "distinctive", "missing_markers"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    # each label's best program: callable first, then by coverage
    frame = frame.sort_values(
        ["callable", "marker_coverage"], ascending=False, kind="stable"
    ).drop_duplicates(["level", "label"])
    order = {lab: i for i, lab in enumerate(pd.unique(pd.concat(list(tables.values()))["label"]))}
    return frame.sort_values(
        ["level", "label"], key=lambda s: s.map(order) if s.name == "label" else s, kind="stable"
    ).reset_index(drop=True)


def _distinctive(
    markers: pd.DataFrame, own: pd.DataFrame, label: str, signed: pd.DataFrame, present: set
) -> list[str]:
    """The ``+`` markers of a program, present in the data, that set its label apart.

    A marker is distinctive when no competing label weighs it as much (CD14 for monocytes),
    or when every label that does is told apart by a present marker this program wants
    negative and that label positive (CD27 for B memory, with CD38 against plasmablasts).
    ``signed``: markers x labels, each label's strongest weight (negative for ``-``).
    """
    negatives = set(own.loc[(own["weight"] < 0) & own["feature"].isin(present), "feature"])
    rivals = signed.drop(columns=label)
    found = []
    for feature, weight in zip(markers["feature"], markers["weight"], strict=True):
        if feature not in present:
            continue
        tied = rivals.columns[rivals.loc[feature] >= weight] if feature in rivals.index else []
        if all(
            any(rivals.at[n, rival] > 0 for n in negatives if n in rivals.index) for rival in tied
        ):
            found.append(feature)
    return found


def _assign(
    scores: np.ndarray,
    clusters: np.ndarray,
    graph: sp.csr_matrix | None,
    min_confidence: float,
    positive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Label index per cell (-1 = unassigned) and its confidence, from cells x labels scores.

    ``positive``: a cell whose best blended score is not above 0 is unassigned.
    """
    usable = np.isfinite(scores).any(axis=0)
    s = np.where(np.isfinite(scores), scores, -1.0)
    if graph is not None:
        degree = np.asarray(graph.sum(axis=1)).ravel()
        smooth = graph @ s / np.maximum(degree, 1e-12)[:, None]
        s = np.where(degree[:, None] > 0, 0.5 * s + 0.5 * smooth, s)
    codes, inverse = np.unique(clusters, return_inverse=True)
    sums = np.zeros((len(codes), s.shape[1]))
    np.add.at(sums, inverse, s)
    cluster_mean = sums / np.bincount(inverse, minlength=len(codes))[:, None]
    blended = _CLUSTER_BLEND * cluster_mean[inverse] + (1 - _CLUSTER_BLEND) * s
    # a cell keeps its cluster's label unless its own evidence clearly prefers another
    rows = np.arange(len(s))
    own_best = s.argmax(axis=1)
    disagree = s[rows, own_best] - s[rows, blended.argmax(axis=1)] > _OVERRIDE_MARGIN
    blended[disagree] = s[disagree]
    blended[:, ~usable] = -np.inf
    logits = (blended - blended.max(axis=1, keepdims=True)) / _TEMPERATURE
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    best = prob.argmax(axis=1)
    confidence = prob[np.arange(len(best)), best]
    keep = confidence >= min_confidence
    if positive:
        keep &= blended[np.arange(len(best)), best] > 0
    best = np.where(keep, best, -1)
    return best, confidence


def _assign_l2(
    mods: dict[str, AnnData],
    obs_names: pd.Index,
    l2_tables: dict[str, pd.DataFrame],
    l1_labels: list[str],
    l1: np.ndarray,
    l1_conf: np.ndarray,
    callable_l2: set[str],
    clusters: np.ndarray,
    graph: sp.csr_matrix | None,
    min_confidence: float,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """l2 label and confidence per cell, within each l1 lineage, and the l2 category order."""
    n = len(l1)
    l2 = np.full(n, UNASSIGNED, dtype=object)
    l2_conf = np.zeros(n)
    l2_order: list[str] = []
    for parent in l1_labels:
        children = list(
            dict.fromkeys(
                lab for t in l2_tables.values() for lab in t.loc[t["parent"] == parent, "label"]
            )
        )
        rows = np.flatnonzero(l1 == parent)
        usable = [c for c in children if c in callable_l2]
        if children and len(usable) < 2:  # the panel cannot tell this lineage's types apart
            l2_order.append(parent)
            l2[rows] = parent
            l2_conf[rows] = l1_conf[rows]
            continue
        l2_order += children
        if not children or rows.size == 0:
            continue
        sub = {m: t[t["parent"] == parent] for m, t in l2_tables.items()}
        child_scores = _label_scores(mods, obs_names, sub, children, rows, _L2_LOW)
        missing = [j for j, lab in enumerate(children) if lab not in callable_l2]
        child_scores[:, missing] = -np.inf
        sub_graph = graph[rows][:, rows] if graph is not None else None
        idx, conf = _assign(
            child_scores, clusters[rows], sub_graph, min_confidence, positive=bool(missing)
        )
        l2[rows] = np.where(idx >= 0, np.array(children, dtype=object)[idx], UNASSIGNED)
        l2_conf[rows] = conf
    return l2, l2_conf, l2_order


def annotate(
    mdata,
    *,
    cluster_key: str = "leiden",
    use: tuple[str, ...] = ("rna", "prot"),
    min_confidence: float = 0.5,
    key_prefix: str = "",
    graph_key: str = "wnn_connectivities",
    markers: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Label cells with Azimuth's PBMC l1 and l2 cell types from marker tables.

    Parameters
    ----------
    mdata
        MuData (n_cells cells) with normalised ``.X`` in ``mod["rna"]`` (gene symbols as
        ``var_names``) and/or ``mod["prot"]`` (``var["alias"]``, ``var["isotype"]``), and
        ``obs[cluster_key]``; ``obsp[graph_key]`` (n_cells x n_cells) smooths cell scores
        when present.
    cluster_key
        Column of ``mdata.obs`` with cluster labels (e.g. Leiden on the WNN graph).
    use
        Modalities to score with, among ``"rna"`` and ``"prot"``; absent ones are skipped.
    min_confidence
        Cells whose chosen label has a lower softmax probability are ``"unassigned"``.
    key_prefix
        Prefix for the written ``obs`` columns.
    graph_key
        ``mdata.obsp`` key of the cell-cell graph used to smooth scores.
    markers
        ``{"rna": table, "prot": table}`` as returned by `load_markers`; default: shipped.

    Returns
    -------
    pandas.DataFrame
        `label_coverage` of the data: which labels the markers present can call. Writes
        ``obs[key_prefix + "l1"]``, ``"l2"`` (categoricals, ``"unassigned"`` when
        ambiguous; l2 is ``"unassigned"`` wherever l1 is, and the l1 name where fewer than
        two of its children are callable), ``"l1_confidence"`` and ``"l2_confidence"``
        (float in [0, 1]).

    Warns
    -----
    UserWarning
        Naming the labels that are not callable and their missing markers.

    Examples
    --------
    >>> from sccohort.tl import annotate, leiden
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata(embedded=True)  # HVGs, PCs and the WNN graph
    >>> leiden(mdata, neighbors_key="wnn_snn", seed=0)
    >>> coverage = annotate(mdata, use=("rna", "prot"))
    >>> found = mdata.obs["l1"].astype(str) == toy_mudata().obs["l1"].astype(str)
    >>> bool(found.mean() > 0.85)
    True
    """
    modalities = [m for m in use if m in mdata.mod]
    unknown = [m for m in use if m not in _FEATURE_COLUMN]
    if unknown or not modalities:
        raise InputError(
            f"no usable modality in use={use!r} (the object has {list(mdata.mod)})",
            key="use",
            hint="use 'rna' and/or 'prot', present in mdata.mod",
        )
    if cluster_key not in mdata.obs:
        raise InputError(
            f"obs has no column {cluster_key!r}",
            key="cluster_key",
            hint="cluster first (sccohort.tl.leiden) or pass cluster_key",
        )
    tables = {m: (markers or {}).get(m) for m in modalities}
    tables = {m: t if t is not None else load_markers(m) for m, t in tables.items()}
    clusters = mdata.obs[cluster_key].astype(str).to_numpy()
    graph = mdata.obsp[graph_key].tocsr() if graph_key in mdata.obsp else None
    n = mdata.n_obs
    all_rows = np.arange(n)

    l1_tables = {m: t[t["level"] == "l1"] for m, t in tables.items()}
    l1_labels = [
        lab for lab in L1_LABELS if any((t["label"] == lab).any() for t in tables.values())
    ]
    l1_labels += sorted({lab for t in l1_tables.values() for lab in t["label"]} - set(l1_labels))
    mods = {m: mdata.mod[m] for m in modalities}
    coverage = label_coverage(tables, mods)
    can = coverage[coverage["callable"]]
    callable_ = {lv: set(can.loc[can["level"] == lv, "label"]) for lv in ("l1", "l2")}
    _warn_uncallable(coverage)
    if "rna" in mods and store_of(mods["rna"]) is not None:
        mods["rna"] = _marker_columns(mods["rna"], tables["rna"])
    scores = _label_scores(mods, mdata.obs_names, l1_tables, l1_labels, all_rows, _L1_LOW)
    missing = [j for j, lab in enumerate(l1_labels) if lab not in callable_["l1"]]
    scores[:, missing] = -np.inf
    l1_idx, l1_conf = _assign(scores, clusters, graph, min_confidence, positive=bool(missing))
    l1 = np.where(l1_idx >= 0, np.array(l1_labels, dtype=object)[l1_idx], UNASSIGNED)

    l2_tables = {m: t[t["level"] == "l2"] for m, t in tables.items()}
    l2, l2_conf, l2_order = _assign_l2(
        mods,
        mdata.obs_names,
        l2_tables,
        l1_labels,
        l1,
        l1_conf,
        callable_["l2"],
        clusters,
        graph,
        min_confidence,
    )

    index = mdata.obs_names
    mdata.obs[key_prefix + "l1"] = pd.Categorical(l1, categories=[*l1_labels, UNASSIGNED])
    mdata.obs[key_prefix + "l2"] = pd.Categorical(l2, categories=[*l2_order, UNASSIGNED])
    mdata.obs[key_prefix + "l1_confidence"] = pd.Series(l1_conf, index=index, dtype=np.float32)
    mdata.obs[key_prefix + "l2_confidence"] = pd.Series(l2_conf, index=index, dtype=np.float32)
    return coverage


def _warn_uncallable(coverage: pd.DataFrame) -> None:
    lost = coverage[~coverage["callable"]]
    if lost.empty:
        return
    named = "; ".join(
        f"{row.level} {row.label} (missing {row.missing_markers.replace(';', ', ') or 'none'})"
        for row in lost.itertuples()
    )
    warnings.warn(
        f"{len(lost)} cell-type label(s) cannot be called from the markers in the data and "
        f"are not assigned: {named}. A labelled reference ([annotation] reference) can "
        "transfer them",
        UserWarning,
        stacklevel=3,
    )
