"""Stage `shard`: manifest -> size-bounded WebDataset shards, class map and count index,
plus the LR-search train/val shards in the `lrsearch/` subfolder."""

import os

from _common import params_from, parser, run

from glsim.data.lrsearch import write_lr_search_shards
from glsim.data.registry import get_dataset
from glsim.data.shards import write_shards
from glsim.runs import manifest_path, shards_dir


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    d = params.data
    manifest, out = manifest_path(params), shards_dir(params)
    limits = dict(
        max_count=d.shard_max_count,
        max_bytes=d.shard_max_bytes,
        workers=max(1, min(4, os.cpu_count() or 1)),
    )
    index = write_shards(manifest, out, **limits)
    print("final:", {split: entry["count"] for split, entry in index["splits"].items()})
    large = get_dataset(d.dataset_source).large
    index = write_lr_search_shards(
        manifest, shards_dir(params, "lrsearch"), seed=params.protocol.search_seed, large=large,
        **limits,
    )
    print(
        "lr search (test = val):",
        {split: entry["count"] for split, entry in index["splits"].items()},
    )


if __name__ == "__main__":
    run(main, tracking=False)
