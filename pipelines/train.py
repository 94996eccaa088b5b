"""Stage `train@DATASET-MODEL-SEED`: fine-tune one model with one seed at its searched LR; a
killed run resumes from its last checkpoint and a finished one is not repeated. A seed the
dataset's own protocol.seeds leaves out trains nothing (its outputs say so)."""

from _common import params_from, parser, run

from glsim.protocol import skip_unlisted_seed, train_final
from glsim.runs import RunSpec
from glsim.train.distributed import from_env, teardown


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    params = params_from(args)
    skipped = skip_unlisted_seed(params, RunSpec(args.model, args.seed), evaluate=False)
    if skipped:
        print(skipped)
        return
    try:
        run_dir = train_final(params, args.model, args.seed)
        if from_env().is_main:  # under torchrun: once, not once per rank
            print(f"run: {run_dir}")
    finally:
        teardown()  # under torchrun: leave the process group (NCCL warns of a leak otherwise)


if __name__ == "__main__":
    run(main)
