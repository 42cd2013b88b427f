"""Antibody names as a reader can use them: isotype controls recognised, and a protein alias.

`protein_alias` turns a panel's antibody name (``CD3:UCHT1|CD3E|AHS0231|pAbO``,
``CD14_TotalSeqB``, ``MHCII (HLA-DR)``, ``PD-1``) into a target name comparable across
panels; `is_isotype` recognises isotype controls by name.
"""

from __future__ import annotations

import re

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
