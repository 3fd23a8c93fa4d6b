"""Data layer: datasets in their official layouts -> WebDataset shards -> decoded, augmented batches.

Writing: `write_shards` (CLI and SOURCES registry, sources/ readers, writer), `demo` (the embedded demo set).
Reading: `stream` (StreamConfig, build_loader), with `shards` (shard specs), `manifest` (counts, classes),
`transforms` (per-objective decode and augmentation), `resume` (skip plans) and `seeding` (per-sample seeds).
This package imports nothing from pretrain/ or finetune/.
"""
