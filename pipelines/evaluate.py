"""Stage `evaluate@DATASET-MODEL-SEED`: test-split top-1, per-class accuracy and crop hit
rates. A seed the dataset's own protocol.seeds leaves out is not evaluated (its outputs say so)."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.specs import RunSpec
from glsim.protocol.train import evaluate_final, skip_unlisted_seed


def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = stage_params(args)
    skipped = skip_unlisted_seed(params, RunSpec(args.model, args.seed), train=False)
    if skipped:
        print(skipped)
        return
    report = evaluate_final(params, args.model, args.seed)
    print(
        f"{args.model} seed {args.seed}: top-1 {report['top1']:.2f}% {report.get('localisation', '')}"
    )


if __name__ == "__main__":
    run(main)
