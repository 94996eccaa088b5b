"""Which counts the validation suite checks: the dataset's registry entry (Table 9, or
derived from params for a generated set), overridden key by key by ``data.expected``."""

from __future__ import annotations

from glsim.config import ExpectedCounts, Params
from glsim.data.registry import get_dataset


def expected_counts(params: Params) -> ExpectedCounts:
    base = get_dataset(params.data.dataset_source).expected_counts(params)
    override = params.data.expected
    return ExpectedCounts(
        **{k: v if (v := getattr(override, k)) is not None else getattr(base, k) for k in ExpectedCounts.model_fields}
    )
