"""Whether a run is due: finished and evaluated under its current run key (the flows skip
a run that is; the stages rely on ``train_run`` and DVC for the same)."""

from __future__ import annotations

from pathlib import Path

from glsim import runs
from glsim.config import Params
from glsim.protocol.specs import report_key
from glsim.runs import RunSpec
from glsim.train.run import is_finished


def pretrain_done(params: Params) -> bool:
    """Pretraining finished under its current run key: the checkpoint is at the last epoch
    with :func:`glsim.runs.pretrain_key`, and the weights file and a report with that key
    (written last) exist."""
    key = runs.pretrain_key(params)
    report = runs.pretrain_report(params)
    return (
        is_finished(runs.pretrain_dir(params), key, params.pretrain.epochs)
        and Path(params.pretrain.output).is_file()
        and report_key(report) == key
    )


def is_done(params: Params, spec: RunSpec) -> bool:
    """Neither training nor evaluation of ``spec`` is due: its checkpoint finished under the
    current run key, and its report was written under that key."""
    key = runs.run_key(params, spec)
    return (
        is_finished(spec.run_dir(params), key, params.train.epochs)
        and report_key(spec.report_path(params)) == key
    )
