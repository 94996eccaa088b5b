"""Stage `ablation@VARIANT-SEED`: train and evaluate one ablation variant (Tables 5, 11-15)."""

from _common import params_from, parser, run

from glsim.protocol import run_variant


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--variant", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    report = run_variant(params_from(args), args.variant, args.seed)
    print(
        f"{args.variant} seed {args.seed}: top-1 {report['top1']:.2f}% {report.get('localisation', '')}"
    )


if __name__ == "__main__":
    run(main)
