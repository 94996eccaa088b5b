"""Stage `train@MODEL-SEED`: fine-tune one model with one seed; resumes a killed run."""

from _common import params_from, parser, run

from glsim.train.run import RunSpec, train_run


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    out = train_run(params_from(args), RunSpec(model=args.model, seed=args.seed))
    print(f"run: {out}")


if __name__ == "__main__":
    run(main)
