"""Stage `train@DATASET-MODEL-SEED`: fine-tune one model with one seed at its searched LR; a
killed run resumes from its last checkpoint and a finished one is not repeated. A seed the
dataset's own protocol.seeds leaves out trains nothing (its outputs say so)."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.specs import RunSpec
from glsim.protocol.train import skip_unlisted_seed, torchrun_rank, train_final


def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = stage_params(args)
    skipped = skip_unlisted_seed(params, RunSpec(args.model, args.seed), evaluate=False)
    if skipped:
        print(skipped)
        return
    with torchrun_rank() as is_main:
        run_dir = train_final(params, args.model, args.seed)
        if is_main:
            print(f"run: {run_dir}")


if __name__ == "__main__":
    run(main)
