"""FAISS behind a few functions (build_index, search, save, load) and retrieval metrics."""
