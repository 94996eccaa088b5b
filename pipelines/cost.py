"""Stage `cost`: inference throughput and peak memory per model (best batch, accuracy
trade-off plots) and each DFSM's wall time beside the backbone forward -> reports/cost/."""

from _common import run

from glsim.protocol.cost import run_stage
from glsim.protocol.entry import stage_params, stage_parser


def main() -> None:
    params = stage_params(stage_parser(__doc__).parse_args())
    print("\n".join(str(p) for p in run_stage(params)))


if __name__ == "__main__":
    run(main, tracking=False)
