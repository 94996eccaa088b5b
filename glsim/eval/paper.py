"""The paper's published numbers that a ledger row is set beside: Table 4, test top-1 (%)
mean ± std over seeds, ViT B-16 backbones at 224 px (docs/METHOD.md "Published numbers to
compare with"). The built-in generated dataset and the ablation variants have none."""

from __future__ import annotations

from typing import Any

TABLE4_SOURCE = "Table 4 (ViT B-16 / RN-101, 224 px)"
TABLE4_MODELS = ("resnet101", "cal", "vit", "transfg", "ffvt", "glsim")
# dataset -> one (mean, std) per model of TABLE4_MODELS, in that order
TABLE4 = {
    "cub": ((82.71, 0.06), (88.44, 0.25), (90.11, 0.17), (90.49, 0.06), (90.05, 0.04), (90.93, 0.24)),
    "dafb": ((91.20, 0.08), (95.15, 0.01), (91.78, 0.06), (92.87, 0.01), (91.49, 0.01), (93.36, 0.02)),
    "dogs": ((91.10, 0.18), (89.78, 0.10), (91.36, 0.05), (90.68, 0.14), (91.49, 0.01), (92.01, 0.09)),
    "flowers": ((92.36, 0.24), (98.14, 0.04), (99.45, 0.03), (99.44, 0.03), (99.32, 0.02), (99.48, 0.02)),
    "food": ((87.45, 0.21), (89.71, 0.12), (92.43, 0.04), (92.76, 0.05), (91.89, 0.01), (92.97, 0.04)),
    "inat17": ((63.37, 0.16), (69.29, 0.03), (69.38, 0.04), (72.34, 0.12), (69.09, 0.04), (73.50, 0.06)),
    "moe": ((94.22, 0.06), (97.55, 0.00), (96.47, 0.11), (96.59, 0.20), (96.67, 0.15), (96.67, 0.16)),
    "nabirds": ((81.00, 0.26), (88.33, 0.49), (87.36, 0.09), (88.76, 0.08), (86.63, 0.08), (89.11, 0.16)),
    "pets": ((93.20, 0.19), (93.89, 0.23), (94.10, 0.07), (93.93, 0.14), (94.34, 0.11), (95.01, 0.18)),
    "vegfru": ((89.34, 0.05), (90.33, 4.28), (95.77, 0.05), (95.91, 0.04), (95.58, 0.02), (96.14, 0.04)),
}  # fmt: skip


def paper_value(dataset: str, model: str) -> dict[str, Any] | None:
    """The paper's ``{top1_mean, top1_std, source}`` for ``model`` on ``dataset`` (the
    dataset's registered name), or None where the paper has no such number."""
    row = TABLE4.get(dataset)
    if row is None or model not in TABLE4_MODELS:
        return None
    mean, std = row[TABLE4_MODELS.index(model)]
    return {"top1_mean": mean, "top1_std": std, "source": TABLE4_SOURCE}
