"""Stage `localisation_curve` (curve/dvc.yaml): the upstream pretraining repeated with each
of curve.seeds for curve.epochs, every epoch's weights probed before fine-tuning; writes
reports/localisation_curve/ (csv, json, md, png) and one MLflow run."""

from _common import params_from, parser, run

from glsim.eval.curve import localisation_curve


def main() -> None:
    print(localisation_curve(params_from(parser(__doc__).parse_args())))


if __name__ == "__main__":
    run(main)
