"""Build ``src/sccohort/resources/genes_human.tsv.gz`` from Debian's org.Hs.eg.db.

Provenance: NCBI Entrez Gene (public domain) as packaged by Bioconductor's
org.Hs.eg.db 3.16 (Debian ``r-bioc-org.hs.eg.db``). Keeps every protein-coding gene
with an Ensembl id, the 13 mitochondrial protein-coding genes under their HGNC
``MT-`` names, and the non-coding / TCR / immunoglobulin genes that PBMC
single-cell data are known to express. Run once by a developer:

    apt-get download r-bioc-org.hs.eg.db && dpkg -x r-bioc-org.hs.eg.db*.deb /tmp/orghs
    python scripts/make_gene_table.py \
        /tmp/orghs/usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite
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

QUERY = """
select i.symbol, min(e.ensembl_id), t.gene_type, ch.chromosome
from gene_info i join genetype t on i._id = t._id
left join ensembl e on e._id = i._id left join chromosomes ch on ch._id = i._id
group by i._id
"""


def main(sqlite_path: str) -> None:
    rows = sqlite3.connect(sqlite_path).execute(QUERY).fetchall()
    out: dict[str, tuple[str, str]] = {}
    for symbol, ensembl, gtype, chrom in rows:
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
    dest = Path(__file__).parents[1] / "src/sccohort/resources/genes_human.tsv.gz"
    with gzip.open(dest, "wt") as fh:
        fh.write("symbol\tgene_id\tkind\n")
        for symbol in sorted(out):
            fh.write(f"{symbol}\t{out[symbol][0]}\t{out[symbol][1]}\n")
    print(f"wrote {len(out)} genes to {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
