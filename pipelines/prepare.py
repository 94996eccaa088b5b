"""Stage `prepare`: download/verify/extract/parse (or generate) the dataset into a manifest."""

from _common import run

from glsim.protocol.data import prepare
from glsim.protocol.entry import stage_params, stage_parser


def main() -> None:
    print(f"manifest: {prepare(stage_params(stage_parser(__doc__).parse_args()))}")


if __name__ == "__main__":
    run(main, tracking=False)
