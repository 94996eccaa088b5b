"""Stage `shard`: manifest -> size-bounded WebDataset shards, class map and count index,
plus the LR-search train/val shards in the `lrsearch/` subfolder."""

from _common import run

from glsim.protocol.data import shard
from glsim.protocol.entry import stage_params, stage_parser


def main() -> None:
    index = shard(stage_params(stage_parser(__doc__).parse_args()))
    print("final:", {split: entry["count"] for split, entry in index["final"]["splits"].items()})
    print(
        "lr search (test = val):",
        {split: entry["count"] for split, entry in index["lrsearch"]["splits"].items()},
    )


if __name__ == "__main__":
    run(main, tracking=False)
