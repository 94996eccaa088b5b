"""Stage `probe`: where the pretrained backbone's GLS and CLS-attention boxes land on the
test split before fine-tuning, against the shuffled-box baseline."""

from _common import params_from, parser, run

from glsim.protocol import probe


def main() -> None:
    print(probe(params_from(parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
