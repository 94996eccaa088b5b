"""Stage `shard`: manifest -> size-bounded WebDataset shards, class map and count index,
plus the LR-search train/val shards in the `lrsearch/` subfolder."""

from _common import params_from, parser, run

from glsim.data.stage import shard


def main() -> None:
    index = shard(params_from(parser(__doc__).parse_args()))
    print("final:", {split: entry["count"] for split, entry in index["final"]["splits"].items()})
    print(
        "lr search (test = val):",
        {split: entry["count"] for split, entry in index["lrsearch"]["splits"].items()},
    )


if __name__ == "__main__":
    run(main, tracking=False)
