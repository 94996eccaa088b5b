"""Attention maps of a timm ViT and the attention-based selectors GLSim is compared with.

timm's ``Attention`` runs fused ``scaled_dot_product_attention`` and never materialises the
attention matrix, so the maps are recomputed here from the block's own ``norm1`` and
``attn.qkv`` (with ``q_norm`` / ``k_norm`` when the block has qk-norm).
:func:`forward_blocks_with_attention` runs the blocks with that explicit path, so each
block's output is the one timm computes, and each map costs no second ``qkv``.

Selectors (all vectorised over the batch; T = 1 + N tokens, CLS first):

* :func:`cls_attention` - last-layer CLS attention, head mean (Vaswani et al.; FFVT Fig. 2).
* :func:`attention_rollout` - Abnar & Zuidema, "Quantifying Attention Flow in
  Transformers", ACL 2020 (used by RAMS-Trans and DCAL).
* :func:`psm_scores` - TransFG's part selection module (He et al., AAAI 2022, Eq. 4-5).
* :func:`maws_scores` - FFVT's mutual attention weight selection (Wang et al., BMVC 2021).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _check_block(block: nn.Module) -> None:
    attn = getattr(block, "attn", None)
    if not (hasattr(block, "norm1") and attn is not None and hasattr(attn, "qkv")):
        raise TypeError(
            f"{type(block).__name__} is not a timm ViT Block with norm1 and attn.qkv; "
            "attention maps are only recomputed for timm.models.vision_transformer.Block"
        )
    if getattr(attn, "gate", None) is not None:
        raise TypeError("gated attention (attn.gate) is not supported by glsim.models.attention")


def attention_logits(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-softmax attention scores of ``block`` on its input ``x``, and the values.

    Args:
        block: a timm ViT ``Block``.
        x: the block input (B, T, D), before ``norm1``.

    Returns:
        ``(logits, v)``: q k^T / sqrt(d_h) (B, H, T, T) and the values (B, H, T, d_h).
    """
    _check_block(block)
    attn = block.attn
    batch, tokens, _ = x.shape
    qkv = attn.qkv(block.norm1(x))  # (B, T, 3 * H * d_h)
    qkv = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, H, T, d_h)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, T, T)
    return logits, v


def attention_weights(block: nn.Module, x: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_h)) of ``block`` on its input ``x``: (B, H, T, T), rows sum to 1."""
    logits, _ = attention_logits(block, x)
    return logits.softmax(dim=-1)


def block_with_attention(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run one timm ``Block`` through the explicit attention path.

    Same arithmetic as ``Block.forward`` with fused attention off (pre-norm, residuals,
    layer scale, drop path, attention dropout), returning the pre-softmax logits too.

    Returns:
        ``(x_out, logits)``: (B, T, D) and (B, H, T, T).
    """
    attn = block.attn
    batch, tokens, _ = x.shape
    logits, v = attention_logits(block, x)
    weights = attn.attn_drop(logits.softmax(dim=-1))  # (B, H, T, T)
    mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, attn.attn_dim)  # (B, T, H*d_h)
    mixed = attn.proj_drop(attn.proj(attn.norm(mixed)))  # (B, T, D)
    x = x + block.drop_path1(block.ls1(mixed))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, logits


def forward_blocks_with_attention(
    blocks: Iterable[nn.Module], x: Tensor, *, logits: bool = False
) -> tuple[Tensor, list[Tensor]]:
    """Run ``blocks`` in order, collecting every block's attention map.

    Args:
        blocks: timm ViT blocks (e.g. ``vit.blocks`` or a slice of it).
        x: tokens (B, T, D) after position embedding / ``norm_pre``.
        logits: return the pre-softmax scores instead of the softmax weights (MAWS
            normalises the CLS column of the scores, not of the weights).

    Returns:
        ``(x, maps)``: the output tokens (B, T, D) and one (B, H, T, T) map per block.
    """
    maps: list[Tensor] = []
    for block in blocks:
        x, block_logits = block_with_attention(block, x)
        maps.append(block_logits if logits else block_logits.softmax(dim=-1))
    return x, maps


def cls_attention(attn_last: Tensor, *, num_prefix_tokens: int = 1) -> Tensor:
    """Head-mean attention of the CLS query to the patch tokens of one layer.

    Args:
        attn_last: attention weights (B, H, T, T), usually of the last block.

    Returns:
        (B, N) scores over the N = T - num_prefix_tokens patch tokens; higher = selected.
    """
    return attn_last[:, :, 0, num_prefix_tokens:].mean(dim=1)  # (B, N)


def attention_rollout(
    attns: list[Tensor], *, add_residual: bool = True, num_prefix_tokens: int = 1
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020, Eq. 1): the CLS row of prod_l A_l.

    Per layer: A_l = mean over heads; with ``add_residual`` A_l = 0.5 A_l + 0.5 I for the
    skip connection; rows re-normalised to sum to 1. Then A~_l = A_l A~_(l-1), A~_1 = A_1.

    Args:
        attns: per-layer attention weights, first layer first, each (B, H, T, T).

    Returns:
        (B, N) rolled-out attention of the CLS token to the patch tokens.
    """
    if not attns:
        raise ValueError("attention_rollout needs at least one attention map, got none")
    rollout = None
    for attn in attns:
        layer = attn.mean(dim=1)  # (B, T, T)
        if add_residual:
            eye = torch.eye(layer.shape[-1], dtype=layer.dtype, device=layer.device)
            layer = 0.5 * layer + 0.5 * eye  # (B, T, T)
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rollout = layer if rollout is None else layer @ rollout  # (B, T, T)
    return rollout[:, 0, num_prefix_tokens:]  # (B, N)


def psm_scores(attns: list[Tensor], *, num_prefix_tokens: int = 1) -> tuple[Tensor, Tensor]:
    """TransFG's part selection module (He et al. 2022, Eq. 4-5).

    Per head, the raw attention matrices of the given layers (TransFG: the first L-1) are
    multiplied, a_final = A_(L-1) A_(L-2) ... A_1, with no head averaging and no residual
    term; each head then selects the patch its CLS row weighs most.

    Args:
        attns: per-layer attention weights, first layer first, each (B, H, T, T).

    Returns:
        ``(scores, part_index)``: the CLS rows of the product over patch tokens (B, H, N)
        and each head's selected patch (B, H), an index into the N patch tokens.
    """
    if not attns:
        raise ValueError("psm_scores needs at least one attention map, got none")
    product = attns[0]  # (B, H, T, T)
    for attn in attns[1:]:
        product = attn @ product  # (B, H, T, T)
    scores = product[:, :, 0, num_prefix_tokens:]  # (B, H, N)
    return scores, scores.argmax(dim=-1)  # (B, H, N), (B, H)


def maws_scores(attn_logits: Tensor, *, num_prefix_tokens: int = 1) -> Tensor:
    """FFVT's mutual attention weight selection for one layer (Wang et al. 2021, Eq. 6-8).

    a = the CLS row of the attention weights (softmax over keys: what the CLS token
    attends to); b = the CLS column of the scores with softmax over the queries (how
    strongly each token attends to the CLS token, normalised across tokens); both
    head-averaged; score = a * b.

    Args:
        attn_logits: pre-softmax scores q k^T / sqrt(d_h) of one layer (B, H, T, T)
            (``forward_blocks_with_attention(..., logits=True)``).

    Returns:
        (B, N) mutual attention scores of the patch tokens; higher = selected. The
        reference code ranks the CLS token too; it is excluded here since FFVT
        concatenates the CLS token separately anyway.
    """
    cls_row = attn_logits[:, :, 0, :].softmax(dim=-1).mean(dim=1)  # (B, T)
    cls_col = attn_logits[:, :, :, 0].softmax(dim=-1).mean(dim=1)  # (B, T)
    return (cls_row * cls_col)[:, num_prefix_tokens:]  # (B, N)
