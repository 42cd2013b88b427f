"""Feature names: gene symbols without genome prefixes, protein aliases, isotype controls.

Every reader builds its ``var`` tables here, so that genes and antibodies are named the same
way whatever file they came from:

- genes: ``var_names`` are symbols without a genome prefix (``hg19_CD3E`` -> ``CD3E``), made
  unique like anndata's ``var_names_make_unique`` (``name``, ``name-1``, ``name-2``...);
  ``var["feature_name_raw"]`` keeps the name as the file gave it and ``var["gene_ids"]`` the
  gene id when the file has one;
- proteins: ``var_names`` are the names as the panel gave them (made unique if needed);
  ``var["alias"]`` is a cleaned target name (``MHCII (HLA-DR)`` -> ``HLA-DR``,
  ``CD3_TotalSeqB`` -> ``CD3``, ``CD4:RPA-T4|CD4|AHS0032|pAbO`` -> ``CD4``, ``PD-1 (CD279)``
  -> ``CD279``) and ``var["isotype"]`` flags isotype controls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: Cell Ranger ``feature_type`` -> sccohort modality name.
FEATURE_TYPE_TO_MODALITY = {
    "Gene Expression": "rna",
    "Antibody Capture": "prot",
    "Multiplexing Capture": "hto",
}

# hg19_, GRCh38_, GRCh38-, mm10___, hg19-, GRCm39_ (one prefix, any run of _ or -).
_GENOME_PREFIX = re.compile(r"^(?:hg\d+|GRCh\d+|GRCm\d+|mm\d+)(?:[_-]+)(?=.)", re.IGNORECASE)

# Suffixes and prefixes that panels add to antibody names and that are not part of the target.
_PROT_SUFFIX = re.compile(
    r"[\s_.-]*(?:TotalSeq[\s_.-]*[A-D]?|PROT(?:EIN)?|ADT|AbSeq|pAbO|CITE)\s*$", re.IGNORECASE
)
_PROT_PREFIX = re.compile(r"^(?:ADT|PROT|AB|CITE)[_-]+(?=.)", re.IGNORECASE)
_PAREN = re.compile(r"^(?P<outer>[^()]+?)\s*\((?P<inner>[^()]+)\)\s*$")
_CD_NAME = re.compile(r"^CD\d+[A-Za-z]?$", re.IGNORECASE)

# Isotype controls: an explicit "isotype"/"control", or a host species' immunoglobulin class
# (Mouse IgG1, RatIgG2bk, Armenian hamster IgG), or a bare subclass name (IgG1, IgG2a, IgG2b).
# A bare "IgM", "IgD", "IgA" or "IgG" is an antibody AGAINST human immunoglobulin (a B-cell
# marker), not an isotype control.
_ISOTYPE = re.compile(
    r"isotype|isotyp|\bctrl\b|control"
    r"|(?:mouse|rat|hamster|rabbit|goat)[\s_-]*ig[gmae]"
    r"|^ig[gmae]\d[a-z]*(?:[\s_-]*(?:kappa|lambda|k|l))?$",
    re.IGNORECASE,
)

# Common names -> CD numbers, so that the same target gets the same alias across panels
# (e.g. ECCITE's ``PD-L1 (CD274)`` and ``B7-H1 (PD-L1)``; dsb's ``CD197`` and another panel's
# ``CCR7``). Keys are compared case-insensitively with ``-`` and spaces removed.
_CD_SYNONYMS = {
    "PDL1": "CD274",
    "B7H1": "CD274",
    "PD1": "CD279",
    "CTLA4": "CD152",
    "LAG3": "CD223",
    "TIM3": "CD366",
    "OX40": "CD134",
    "41BB": "CD137",
    "CKIT": "CD117",
    "IL7RALPHA": "CD127",
    "IL7RA": "CD127",
    "IL2RA": "CD25",
    "EPCAM": "CD326",
    "PECAM": "CD31",
    "PECAM1": "CD31",
    "B220": "CD45R",
    "ICOS": "CD278",
    "NKG2D": "CD314",
    "CCR7": "CD197",
    "CCR4": "CD194",
    "CCR5": "CD195",
    "CCR6": "CD196",
    "CXCR3": "CD183",
    "CXCR4": "CD184",
    "CXCR5": "CD185",
    "LAMP1": "CD107a",
    "HLAABC": "HLA-ABC",
    "HLAA,B,C": "HLA-ABC",
}


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


def is_isotype(name: str) -> bool:
    """Whether an antibody name is an isotype control (``Mouse IgG1 isotype``, ``IgG2a``...).

    Anti-human ``IgM``, ``IgD``, ``IgA`` (B-cell markers) are not isotype controls.
    """
    stripped = _strip_protein_decoration(name)
    return bool(_ISOTYPE.search(name) or _ISOTYPE.search(stripped))


def _strip_protein_decoration(name: str) -> str:
    name = name.strip()
    if "|" in name:  # BD AbSeq: "CD4:RPA-T4|CD4|AHS0032|pAbO" -> "CD4:RPA-T4"
        name = name.split("|", 1)[0]
        name = name.split(":", 1)[0]  # drop the clone
    previous = None
    while previous != name:
        previous = name
        name = _PROT_SUFFIX.sub("", name).strip()
        name = _PROT_PREFIX.sub("", name).strip()
    return name or previous


def protein_alias(name: str) -> str:
    """A cleaned target name for an antibody, comparable across panels.

    Rules, in order: drop BD AbSeq decoration (``CD3:UCHT1|CD3E|AHS0231|pAbO`` -> ``CD3``);
    drop panel suffixes/prefixes (``_TotalSeqB``, ``-TotalSeqC``, ``_PROT``, ``_ADT``,
    ``ADT_``); for ``A (B)`` keep the CD number if one of them is one, else ``B``
    (``MHCII (HLA-DR)`` -> ``HLA-DR``, ``CD223 (lag3)`` -> ``CD223``); map a few common
    names to CD numbers (``PD-1`` -> ``CD279``, ``CCR7`` -> ``CD197``, ``HLA-A,B,C`` ->
    ``HLA-ABC``). Isotype controls keep their (undecorated) name.

    Parameters
    ----------
    name
        The antibody name as the panel gave it.

    Returns
    -------
    The alias (a non-empty string).
    """
    base = _strip_protein_decoration(name)
    if is_isotype(name):
        return base
    match = _PAREN.match(base)
    if match:
        outer, inner = match["outer"].strip(), match["inner"].strip()
        if _CD_NAME.match(outer):
            base = outer
        elif _CD_NAME.match(inner):
            base = inner
        else:
            base = _canonical(inner)
            if not _CD_NAME.match(base) and _CD_NAME.match(_canonical(outer)):
                base = _canonical(outer)
    base = _canonical(base.replace(" ", ""))
    if re.match(r"^cd\d", base, re.IGNORECASE):
        base = "CD" + base[2:]
    return base


def _canonical(name: str) -> str:
    key = name.upper().replace("-", "").replace(" ", "")
    return _CD_SYNONYMS.get(key, name)


def gene_var(names: Sequence[str], gene_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``var`` table of an RNA modality.

    Parameters
    ----------
    names
        Gene names as the file gave them (length n_genes), possibly with a genome prefix.
    gene_ids
        Gene ids (e.g. Ensembl), same length, or None.

    Returns
    -------
    DataFrame indexed by unique, prefix-free symbols, with columns ``feature_name_raw`` and
    (if ids were given) ``gene_ids``.
    """
    raw = [str(n) for n in names]
    var = pd.DataFrame(
        {"feature_name_raw": raw},
        index=pd.Index(make_unique(strip_genome_prefix(n) for n in raw)),
    )
    if gene_ids is not None:
        var["gene_ids"] = np.asarray([str(g) for g in gene_ids], dtype=object)
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
