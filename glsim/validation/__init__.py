"""Data validation: the great-expectations suite a prepared dataset must pass."""

from glsim.validation.expected import expected_counts
from glsim.validation.suite import (
    ExpectationOutcome,
    ValidationFailed,
    ValidationReport,
    validate_dataset,
)

__all__ = [
    "ExpectationOutcome",
    "ValidationFailed",
    "ValidationReport",
    "expected_counts",
    "validate_dataset",
]
