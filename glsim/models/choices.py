"""The named choices of the model knobs, as ``Literal`` types.

Torch-free (``typing`` only), so the params schema can import them without loading torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Metric = Literal["cosine", "l1", "l2"]  # GLS similarity (paper Eq. 2; Table 14)
# region selector (Table 12), and two position controls of GLS: the GLS box of each image
# (its size, so its zoom) moved to the image centre or to a random place
Selector = Literal["gls", "attention", "rollout", "random", "gls_centred", "gls_random_place"]

METRICS: tuple[str, ...] = get_args(Metric)
SELECTORS: tuple[str, ...] = get_args(Selector)
