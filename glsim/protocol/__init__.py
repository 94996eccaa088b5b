"""The paper's protocol (App. C) over single runs: the one layer the DVC stages
(``pipelines/``) and the cluster flows (``flows/``) call, so neither holds a recipe, a path
or a run key. Everything here is a function of the params tree (resolved for one dataset
with :func:`glsim.config.for_dataset`); paths and run keys come from :mod:`glsim.runs`.

One submodule per responsibility, and this package imports none of them: a stage's code
deps in ``dvc.yaml`` are its script's import closure (:mod:`glsim.codebase`), so the
prepare stage that imports :mod:`glsim.protocol.data` does not depend on the training code.

* :mod:`~glsim.protocol.entry`: what a stage or flow does first: its params (``--params``,
  ``--set``, ``--dataset``; the numerics profile applied), the tracking store checked.
* :mod:`~glsim.protocol.data`: ``prepare`` and ``shard``; :mod:`~glsim.protocol.validate`:
  the great-expectations suite.
* :mod:`~glsim.protocol.pretrain`: the upstream pretraining; :mod:`~glsim.protocol.probe`:
  the pretrained backbone's boxes before fine-tuning; :mod:`~glsim.protocol.curve`:
  localisation against pretraining strength (its own pretrainings, probed).
* :mod:`~glsim.protocol.specs`: which runs the protocol makes, with which params and LR,
  and what they reported (torch-free: the plan and the registry read it too).
* :mod:`~glsim.protocol.lr_search`, :mod:`~glsim.protocol.train` (final and ablation runs,
  a seed a dataset leaves out, the ranks of a torchrun), :mod:`~glsim.protocol.evaluate`,
  :mod:`~glsim.protocol.done` (finished and evaluated under the current run key).
* :mod:`~glsim.protocol.report`: every dataset's reports -> ``reports/results.*``;
  :mod:`~glsim.protocol.cost`: throughput and memory; :mod:`~glsim.protocol.registry`:
  a model registered and promoted once its seeds are evaluated.
* :mod:`~glsim.protocol.plan`: every run a sweep will make, before it starts (``glsim plan``).

Imports point one way: these modules use train, eval, data, validation, tracking and runs;
nothing in those imports them, except that the registry's candidate reads
:mod:`~glsim.protocol.specs`.
"""
