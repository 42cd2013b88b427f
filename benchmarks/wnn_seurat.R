# Seurat 4.3 side of benchmarks/bench_wnn_seurat.py.
#
# Rscript wnn_seurat.R seurat DIR
#   reads DIR/rna.mtx, DIR/adt.mtx (features x cells counts), DIR/rna_features.txt,
#   DIR/adt_features.txt, DIR/barcodes.txt; computes RNA PCs (LogNormalize 1e4, vst 2,000 HVGs,
#   scale, 30 PCs) and ADT PCs (CLR margin 2, scale, 18 PCs); runs FindMultiModalNeighbors and
#   FindClusters(wsnn, SLM, resolution 0.8); writes pca.csv, apca.csv, seurat_weights.csv,
#   seurat_clusters.csv, seurat_nn_idx.csv, seurat_wsnn.mtx, seurat_timing.csv.
# Rscript wnn_seurat.R cluster DIR NAME
#   reads DIR/NAME.mtx (a cells x cells graph) and writes DIR/NAME_clusters.csv from
#   FindClusters(SLM, resolution 0.8) on it.
suppressPackageStartupMessages({
  library(Seurat)
  library(Matrix)
})
args <- commandArgs(trailingOnly = TRUE)
mode <- args[1]
dir <- args[2]

if (mode == "seurat") {
  barcodes <- readLines(file.path(dir, "barcodes.txt"))
  rna <- as(readMM(file.path(dir, "rna.mtx")), "CsparseMatrix")
  adt <- as(readMM(file.path(dir, "adt.mtx")), "CsparseMatrix")
  rownames(rna) <- make.unique(gsub("_", "-", readLines(file.path(dir, "rna_features.txt"))))
  rownames(adt) <- make.unique(gsub("_", "-", readLines(file.path(dir, "adt_features.txt"))))
  colnames(rna) <- colnames(adt) <- barcodes
  obj <- CreateSeuratObject(counts = rna, assay = "RNA")
  obj[["ADT"]] <- CreateAssayObject(counts = adt)

  DefaultAssay(obj) <- "RNA"
  obj <- NormalizeData(obj, normalization.method = "LogNormalize", scale.factor = 1e4,
                       verbose = FALSE)
  obj <- FindVariableFeatures(obj, selection.method = "vst", nfeatures = 2000, verbose = FALSE)
  obj <- ScaleData(obj, verbose = FALSE)
  obj <- RunPCA(obj, npcs = 30, verbose = FALSE, seed.use = 42)

  DefaultAssay(obj) <- "ADT"
  VariableFeatures(obj) <- rownames(obj[["ADT"]])
  obj <- NormalizeData(obj, normalization.method = "CLR", margin = 2, verbose = FALSE)
  obj <- ScaleData(obj, verbose = FALSE)
  obj <- RunPCA(obj, npcs = 18, reduction.name = "apca", verbose = FALSE, seed.use = 42)

  write.csv(Embeddings(obj, "pca")[, 1:30], file.path(dir, "pca.csv"))
  write.csv(Embeddings(obj, "apca")[, 1:18], file.path(dir, "apca.csv"))

  t0 <- Sys.time()
  obj <- FindMultiModalNeighbors(obj, reduction.list = list("pca", "apca"),
                                 dims.list = list(1:30, 1:18), verbose = FALSE)
  t1 <- Sys.time()
  obj <- FindClusters(obj, graph.name = "wsnn", algorithm = 3, resolution = 0.8,
                      verbose = FALSE)
  t2 <- Sys.time()

  write.csv(data.frame(cell = colnames(obj), rna_weight = obj$RNA.weight,
                       adt_weight = obj$ADT.weight),
            file.path(dir, "seurat_weights.csv"), row.names = FALSE)
  write.csv(data.frame(cell = colnames(obj), cluster = as.character(obj$seurat_clusters)),
            file.path(dir, "seurat_clusters.csv"), row.names = FALSE)
  write.csv(Indices(obj[["weighted.nn"]]), file.path(dir, "seurat_nn_idx.csv"),
            row.names = FALSE)
  writeMM(as(obj[["wsnn"]], "CsparseMatrix"), file.path(dir, "seurat_wsnn.mtx"))
  write.csv(data.frame(
    step = c("FindMultiModalNeighbors", "FindClusters"),
    seconds = c(as.numeric(difftime(t1, t0, units = "secs")),
                as.numeric(difftime(t2, t1, units = "secs")))
  ), file.path(dir, "seurat_timing.csv"), row.names = FALSE)
} else if (mode == "cluster") {
  name <- args[3]
  graph <- as(readMM(file.path(dir, paste0(name, ".mtx"))), "CsparseMatrix")
  cells <- paste0("c", seq_len(nrow(graph)))
  rownames(graph) <- colnames(graph) <- cells
  clusters <- FindClusters(as.Graph(graph), algorithm = 3, resolution = 0.8, verbose = FALSE)
  write.csv(data.frame(cluster = as.character(clusters[, 1])),
            file.path(dir, paste0(name, "_clusters.csv")), row.names = FALSE)
} else {
  stop("mode must be 'seurat' or 'cluster'")
}
