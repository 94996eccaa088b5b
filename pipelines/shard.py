"""Stage `shard`: manifest -> size-bounded WebDataset shards, class map and count index."""

import os

from _common import params_from, parser, run

from glsim.data.registry import manifest_path
from glsim.data.shards import write_shards


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    d = params.data
    index = write_shards(
        manifest_path(d.dataset, d.raw_dir),
        d.shards_dir / d.dataset,
        max_count=d.shard_max_count,
        max_bytes=d.shard_max_bytes,
        workers=max(1, min(4, os.cpu_count() or 1)),
    )
    print({split: entry["count"] for split, entry in index["splits"].items()})


if __name__ == "__main__":
    run(main)
