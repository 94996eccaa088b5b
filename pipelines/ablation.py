"""Stage `ablation@VARIANT-SEED`: train and evaluate one ablation variant (Tables 5, 11-15).
A seed the dataset's own protocol.seeds leaves out runs nothing (its outputs say so)."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.specs import RunSpec
from glsim.protocol.train import run_variant, skip_unlisted_seed


def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--variant", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = stage_params(args)
    variant = params.ablations.variants.get(args.variant)
    if variant is not None:
        spec = RunSpec(variant.model, args.seed, kind="ablation", variant=args.variant)
        skipped = skip_unlisted_seed(params, spec)
        if skipped:
            print(skipped)
            return
    report = run_variant(params, args.variant, args.seed)
    print(
        f"{args.variant} seed {args.seed}: top-1 {report['top1']:.2f}% {report.get('localisation', '')}"
    )


if __name__ == "__main__":
    run(main)
