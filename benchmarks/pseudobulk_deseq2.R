# R DESeq2 on the pseudobulk matrices written by bench_pseudobulk_deseq2.py.
# Usage: Rscript pseudobulk_deseq2.R <dir>; <dir>/manifest.csv lists jobs (id, term);
# <dir>/<id>_counts.csv is donors x genes, <id>_design.csv donors x design columns.
# Writes <dir>/<id>_r.csv (gene, baseMean, log2FoldChange, lfcSE, stat, pvalue, padj, seconds).
suppressPackageStartupMessages(library(DESeq2))
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]
jobs <- read.csv(file.path(dir, "manifest.csv"), stringsAsFactors = FALSE)
for (i in seq_len(nrow(jobs))) {
  id <- jobs$id[i]
  cts <- read.csv(file.path(dir, paste0(id, "_counts.csv")), row.names = 1, check.names = FALSE)
  mm <- as.matrix(read.csv(file.path(dir, paste0(id, "_design.csv")), row.names = 1))
  colnames(mm) <- paste0("x", seq_len(ncol(mm)) - 1)
  term <- paste0("x", jobs$term[i])
  start <- Sys.time()
  dds <- DESeqDataSetFromMatrix(t(as.matrix(cts)), data.frame(row.names = rownames(cts),
                                dummy = seq_len(nrow(cts))), design = ~1)
  dds <- DESeq(dds, full = mm, quiet = TRUE)
  res <- results(dds, name = term, independentFiltering = FALSE)
  secs <- as.numeric(difftime(Sys.time(), start, units = "secs"))
  out <- data.frame(gene = rownames(res), baseMean = res$baseMean,
                    log2FoldChange = res$log2FoldChange, lfcSE = res$lfcSE, stat = res$stat,
                    pvalue = res$pvalue, padj = res$padj, seconds = secs)
  write.csv(out, file.path(dir, paste0(id, "_r.csv")), row.names = FALSE)
  cat(id, "done in", round(secs, 2), "s\n")
}
