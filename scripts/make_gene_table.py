"""Build ``src/sccohort/resources/genes_human.tsv.gz`` from Debian's org.Hs.eg.db.

Provenance: NCBI Entrez Gene (public domain) as packaged by Bioconductor's
org.Hs.eg.db 3.16 (Debian ``r-bioc-org.hs.eg.db``). Run once by a developer:

    apt-get download r-bioc-org.hs.eg.db && dpkg -x r-bioc-org.hs.eg.db*.deb /tmp/orghs
    python scripts/make_gene_table.py \
        /tmp/orghs/usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite

Columns: ``symbol`` (unique), ``gene_id`` (one Ensembl id: the smallest of the gene's),
``kind``, ``other_ids`` (the gene's further Ensembl ids, ``;``-separated, mostly alternative
haplotypes; empty for most genes). Two parts, told apart by ``kind``:

- the core (``kind`` one of `CORE_KINDS`), what the simulator draws its genes from: every
  protein-coding gene with an Ensembl id (``protein_coding``), the 13 mitochondrial
  protein-coding genes under their HGNC ``MT-`` names (``MT``), and the non-coding
  (``lncRNA``) and TCR / immunoglobulin (``TR_IG``) genes that PBMC single-cell data are
  known to express;
- every other gene with an Ensembl id, so that whole-transcriptome files named by Ensembl id
  map to symbols: ``kind`` is its Entrez gene type (``ncRNA``, ``pseudogene``, ``snoRNA``,
  ``snRNA``, ``scRNA``, ``rRNA``, ``other`` (mostly TCR / immunoglobulin segments),
  ``unknown``).
"""

import gzip
import sqlite3
import sys
from pathlib import Path

MT_NAMES = {
    "ND1": "MT-ND1", "ND2": "MT-ND2", "ND3": "MT-ND3", "ND4": "MT-ND4", "ND4L": "MT-ND4L",
    "ND5": "MT-ND5", "ND6": "MT-ND6", "COX1": "MT-CO1", "COX2": "MT-CO2", "COX3": "MT-CO3",
    "CYTB": "MT-CYB", "ATP6": "MT-ATP6", "ATP8": "MT-ATP8",
}  # fmt: skip
EXTRA = [
    "MALAT1", "NEAT1", "XIST", "TRGC1", "TRGC2", "TRAC", "TRBC1", "TRBC2", "IGHM", "IGHD",
    "IGKC", "IGLC2", "IGLC3", "IGHG1", "IGHG2", "IGHG3", "IGHG4", "IGHA1", "IGHA2",
    "TRAV1-2", "TRDV2", "TRGV9", "IGHV3-23", "IGKV3-20", "IGLV2-14",
]  # fmt: skip
HARDCODED = [("TRDC", "ENSG00000211829", "TR_IG")]  # no Ensembl id in org.Hs.eg.db 3.16
#: kinds of the core genes (see the module docstring); the simulator keeps these only
CORE_KINDS = ("protein_coding", "MT", "TR_IG", "lncRNA")
#: Entrez gene type -> kind of the genes outside the core
OTHER_KINDS = {
    "ncRNA": "ncRNA",
    "pseudo": "pseudogene",
    "snoRNA": "snoRNA",
    "snRNA": "snRNA",
    "scRNA": "scRNA",
    "rRNA": "rRNA",
    "other": "other",
    "unknown": "unknown",
}

QUERY = """
select i.symbol, min(e.ensembl_id), t.gene_type, ch.chromosome, group_concat(e.ensembl_id)
from gene_info i join genetype t on i._id = t._id
left join ensembl e on e._id = i._id left join chromosomes ch on ch._id = i._id
group by i._id
"""


def core_genes(rows: list[tuple]) -> dict[str, tuple[str, str]]:
    """``symbol -> (gene_id, kind)`` of the core genes (the table as first shipped)."""
    out: dict[str, tuple[str, str]] = {}
    for symbol, ensembl, gtype, chrom, _ in rows:
        if ensembl is None:
            continue
        if chrom == "MT" and symbol in MT_NAMES:
            out[MT_NAMES[symbol]] = (ensembl, "MT")
        elif gtype == "protein-coding" and chrom != "MT":
            out.setdefault(symbol, (ensembl, "protein_coding"))
        elif symbol in EXTRA:
            kind = "lncRNA" if gtype == "ncRNA" else "TR_IG"
            out.setdefault(symbol, (ensembl, kind))
    for symbol, ensembl, kind in HARDCODED:
        out.setdefault(symbol, (ensembl, kind))
    return out


def main(sqlite_path: str) -> None:
    rows = sqlite3.connect(sqlite_path).execute(QUERY).fetchall()
    out = core_genes(rows)
    assert {kind for _, kind in out.values()} <= set(CORE_KINDS)
    core_ids = {gene_id for gene_id, _ in out.values()}
    for symbol, ensembl, gtype, chrom, _ in rows:
        if ensembl is None or ensembl in core_ids or (chrom == "MT" and symbol in MT_NAMES):
            continue
        assert gtype != "protein-coding", symbol  # every protein-coding gene is in the core
        out.setdefault(symbol, (ensembl, OTHER_KINDS.get(gtype, "unknown")))
    others: dict[str, str] = {}
    for symbol, ensembl, _, chrom, all_ids in rows:
        name = MT_NAMES[symbol] if chrom == "MT" and symbol in MT_NAMES else symbol
        if all_ids and name in out and out[name][0] == ensembl:
            extra = sorted(set(all_ids.split(",")) - {ensembl})
            others[name] = ";".join(extra)
    dest = Path(__file__).parents[1] / "src/sccohort/resources/genes_human.tsv.gz"
    with gzip.GzipFile(dest, "wb", mtime=0) as raw:
        raw.write(b"symbol\tgene_id\tkind\tother_ids\n")
        for symbol in sorted(out):
            gene_id, kind = out[symbol]
            raw.write(f"{symbol}\t{gene_id}\t{kind}\t{others.get(symbol, '')}\n".encode())
    core = sum(kind in CORE_KINDS for _, kind in out.values())
    print(f"wrote {len(out)} genes ({core} core) to {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
