"""Stage `probe`: where the pretrained backbone's GLS and CLS-attention boxes land on the
test split before fine-tuning, against the shuffled-box baseline."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.probe import probe


def main() -> None:
    print(probe(stage_params(stage_parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
