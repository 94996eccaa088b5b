"""The ``validate`` stage: the great-expectations suite over a dataset's manifest and shard
index."""

from __future__ import annotations

from typing import TYPE_CHECKING

from glsim.config import Params
from glsim.validation.stage import validate_and_track

if TYPE_CHECKING:
    from glsim.validation.suite import ValidationReport


def validate(params: Params) -> ValidationReport:
    """The suite over the manifest and shard index; the report goes to
    ``reports/datasets/<dataset>/validation.json`` and MLflow, pass or fail. Raises
    :class:`~glsim.validation.suite.ValidationFailed` when an expectation fails."""
    return validate_and_track(params)
