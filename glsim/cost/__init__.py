"""The cost of GLSim and of the models and selection mechanisms it is compared with.

* :mod:`glsim.cost.flops` - ``glsim cost flops``: Table 1's FLOPs, closed form.
* :mod:`glsim.cost.timing` - ``glsim cost time``: each DFSM's wall time beside the backbone
  forward, measured.
* :mod:`glsim.cost.bench` - ``glsim cost bench``: inference throughput and peak memory per
  model and batch size, best batch per model (Figs. 4 and 7); :mod:`glsim.cost.report`
  writes its CSV, JSON and plots; :mod:`glsim.cost.stage` is the ``cost`` DVC stage.
* :mod:`glsim.cost.measure` - the interleaved timing and paired ratios they share.

Importing this package loads no torch (the ``glsim`` command imports it to add its
subcommands).
"""

from glsim.cost.cli import add_cost_commands

__all__ = ["add_cost_commands"]
