"""Stage `evaluate@MODEL-SEED`: test-split top-1, per-class accuracy and crop hit rates."""

from _common import params_from, parser, run

from glsim.eval.evaluate import evaluate_run
from glsim.eval.report import eval_report_path
from glsim.train.protocol import chosen_lr
from glsim.train.run import RunSpec


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = params_from(args)
    spec = RunSpec(model=args.model, seed=args.seed, lr=chosen_lr(params, args.model))
    report = evaluate_run(params, spec, eval_report_path(params, args.model, args.seed))
    print(
        f"{args.model} seed {args.seed}: top-1 {report['top1']:.2f}% {report.get('localisation', '')}"
    )


if __name__ == "__main__":
    run(main)
