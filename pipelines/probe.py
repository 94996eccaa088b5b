"""Stage `probe`: where the pretrained backbone's GLS and CLS-attention boxes land on the
test split before fine-tuning, against the shuffled-box baseline."""

from _common import params_from, parser, run

from glsim.eval.localisation import probe_backbone
from glsim.runs import probe_report
from glsim.utils import atomic_write_json


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    report = probe_backbone(params)
    atomic_write_json(probe_report(params), report)
    print(report)


if __name__ == "__main__":
    run(main)
