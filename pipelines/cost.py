"""Stage `cost`: inference throughput and peak memory per model (best batch, accuracy
trade-off plots) and each DFSM's wall time beside the backbone forward -> reports/cost/."""

from _common import params_from, parser, run

from glsim.cost.stage import run_stage


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    print("\n".join(str(p) for p in run_stage(params)))


if __name__ == "__main__":
    run(main, tracking=False)
