"""Stage `train@DATASET-MODEL-SEED`: fine-tune one model with one seed at its searched LR; a
killed run resumes from its last checkpoint and a finished one is not repeated."""

from _common import params_from, parser, run

from glsim.protocol import train_final
from glsim.train.distributed import teardown


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    try:
        print(f"run: {train_final(params_from(args), args.model, args.seed)}")
    finally:
        teardown()  # under torchrun: leave the process group (NCCL warns of a leak otherwise)


if __name__ == "__main__":
    run(main)
