"""Stage `lr_search@MODEL`: train each LR of protocol.lr_grid on the search split, keep the
best on val (reports/lr_search/DATASET/MODEL.json)."""

from _common import run

from glsim.protocol.entry import stage_params, stage_parser
from glsim.protocol.lr_search import search_lr


def main() -> None:
    p = stage_parser(__doc__)
    p.add_argument("--model", required=True)
    args = p.parse_args()
    report = search_lr(stage_params(args), args.model)
    print(f"{args.model}: val top-1 by LR {report['val_top1']} -> {report['chosen_lr']:g}")


if __name__ == "__main__":
    run(main)
