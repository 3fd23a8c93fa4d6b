"""Readers of datasets in their official on-disk layouts; `write_shards.SOURCES` registers them by name."""
