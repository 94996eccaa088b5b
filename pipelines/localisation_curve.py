"""Stage `localisation_curve` (curve/dvc.yaml): the upstream pretraining repeated with each
of curve.seeds for curve.epochs, every epoch's weights probed before fine-tuning; writes
reports/localisation_curve/ (csv, json, md, png) and one MLflow run."""

from _common import run

from glsim.protocol.curve import localisation_curve
from glsim.protocol.entry import stage_params, stage_parser


def main() -> None:
    print(localisation_curve(stage_params(stage_parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
