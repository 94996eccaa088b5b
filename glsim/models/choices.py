"""The named choices of the model knobs, as ``Literal`` types.

Torch-free (``typing`` only), so the params schema can import them without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Metric = Literal["cosine", "l1", "l2"]  # GLS similarity (paper Eq. 2; Table 14)
Selector = Literal["gls", "attention", "rollout", "random"]  # region selector (Table 12)

METRICS: tuple[str, ...] = get_args(Metric)
SELECTORS: tuple[str, ...] = get_args(Selector)
