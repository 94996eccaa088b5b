"""Stage `pretrain@backbone`: pretrain the backbone on the generated upstream task."""

from _common import params_from, parser, run

from glsim.train.pretrain import pretrain


def main() -> None:
    print(pretrain(params_from(parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
