"""Stage `pretrain@backbone`: pretrain the backbone on the generated upstream task."""

from pathlib import Path

from _common import params_from, parser, run

from glsim.config import write_resolved
from glsim.train.pretrain import pretrain_backbone


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    work = Path("runs/pretrain")
    write_resolved(params, work)
    report = pretrain_backbone(
        params, work_dir=work, report_path=params.base.reports_dir / "pretrain.json"
    )
    print(report)


if __name__ == "__main__":
    run(main)
