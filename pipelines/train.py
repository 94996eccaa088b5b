"""Stage `train@MODEL-SEED`: fine-tune one model with one seed at its searched LR; a killed
run resumes from its last checkpoint and a finished one is not repeated."""

from _common import params_from, parser, run

from glsim.train.protocol import chosen_lr
from glsim.train.run import RunSpec, train_run


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = params_from(args)
    out = train_run(
        params, RunSpec(model=args.model, seed=args.seed, lr=chosen_lr(params, args.model))
    )
    print(f"run: {out}")


if __name__ == "__main__":
    run(main)
