"""Stage `pretrain@backbone`: pretrain the backbone on the generated upstream task."""

from _common import params_from, parser, run

from glsim.config import write_resolved
from glsim.runs import pretrain_dir, pretrain_report
from glsim.train.pretrain import pretrain_backbone


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    work = pretrain_dir(params)
    write_resolved(params, work)
    print(pretrain_backbone(params, work_dir=work, report_path=pretrain_report(params)))


if __name__ == "__main__":
    run(main)
