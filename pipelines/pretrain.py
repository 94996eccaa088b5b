"""Stage `pretrain@backbone`: pretrain the backbone on the generated upstream task."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.pretrain import pretrain


def main() -> None:
    print(pretrain(stage_params(stage_parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
