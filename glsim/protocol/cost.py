"""The ``cost`` stage: inference throughput and peak memory per model (best batch, the
accuracy trade-off plots) and each DFSM's wall time beside the backbone forward
(:func:`glsim.cost.stage.run_stage`), named here for the stage script."""

from glsim.cost.stage import run_stage

__all__ = ["run_stage"]
