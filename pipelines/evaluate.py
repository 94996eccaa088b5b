"""Stage `evaluate@DATASET-MODEL-SEED`: test-split top-1, per-class accuracy and crop hit rates."""

from _common import params_from, parser, run

from glsim.protocol import evaluate_final


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    report = evaluate_final(params_from(args), args.model, args.seed)
    print(
        f"{args.model} seed {args.seed}: top-1 {report['top1']:.2f}% {report.get('localisation', '')}"
    )


if __name__ == "__main__":
    run(main)
