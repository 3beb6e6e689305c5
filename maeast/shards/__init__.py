"""Offline data preparation: corpora -> webdataset tar shards with a self-describing index.

Each recipe reads one corpus layout and lists its clips (`recipes/`); the builder decodes,
resamples and packs them (`build.py`) in the format that `format.py` writes and reads, and that
`shards/README.md` at the top of the repository specifies.
"""
