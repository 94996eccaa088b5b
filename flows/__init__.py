"""Prefect flows over the protocol layer (:mod:`glsim.protocol`): :mod:`flows.sweep` (the
whole protocol over the params tree), :mod:`flows.train_one` (one training run, the unit a
worker takes), :mod:`flows.gpu` (per-worker GPU slots), :mod:`flows.steps` (one training run
by its coordinates, through the protocol's functions). Deployments: ``prefect.yaml``."""
