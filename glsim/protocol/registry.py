"""What follows the evaluated seeds of a (dataset, model) in a tracked sweep: one seed's
model registered as ``glsim-<dataset>-<model>`` and given ``champion`` or ``challenger`` by
``registry.margin`` (:mod:`glsim.tracking.registry`)."""

from __future__ import annotations

from typing import Any

from glsim.config import Params
from glsim.tracking.registry import decision_dict, register_and_promote


def register(params: Params, dataset: str, model: str) -> dict[str, Any]:
    """Register the seed's model the registry's rule picks and move its alias; returns the
    decision (:class:`~glsim.tracking.registry.Decision` as a dict: ``name``, ``version``,
    ``alias``, ``previous``, ``reason``, ``moved``)."""
    _, decision = register_and_promote(params, dataset, model)
    return decision_dict(decision)
