"""Datasets: completed jobs composed, filtered and split into Parquet shards with a manifest."""
