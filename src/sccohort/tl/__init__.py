"""Cohort-level cell tools: neighbourhood graphs, clustering and embeddings."""
