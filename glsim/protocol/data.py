"""The data stages, ``prepare`` (download, verify, extract, parse or generate the dataset
into a manifest) and ``shard`` (the manifest into size-bounded shards, and the LR search's
train/val shards): :mod:`glsim.data.stage`'s, named here for the stage scripts and flows."""

from glsim.data.stage import prepare, shard, shard_workers

__all__ = ["prepare", "shard", "shard_workers"]
