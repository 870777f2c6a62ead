"""Feature engineering on polars/pyarrow: data contract, mmh3 bucketing, sampling, history, embeddings."""
