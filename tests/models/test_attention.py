"""Attention maps recomputed from timm blocks, and the selectors on hand-worked matrices."""

from __future__ import annotations

import pytest
import timm
import torch

from glsim.models.attention import (
    attention_rollout,
    attention_weights,
    block_with_attention,
    cls_attention,
    forward_blocks_with_attention,
    maws_scores,
    psm_scores,
)


def _tiny_vit(**overrides) -> torch.nn.Module:
    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    kwargs.update(overrides)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # timm's init (std 0.02) gives near-uniform attention; sharpen it
        for param in vit.parameters():
            param.normal_(0.0, 0.3)
    return vit


def _tokens(vit: torch.nn.Module, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    x = vit.patch_embed(torch.randn(batch, 3, 32, 32))
    return vit.norm_pre(vit._pos_embed(x))  # (B, 17, 64)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_blocks_reproduce_timm_output(qk_norm: bool) -> None:
    vit = _tiny_vit(qk_norm=qk_norm, init_values=0.5)
    x = _tokens(vit)
    with torch.no_grad():
        out, maps = forward_blocks_with_attention(vit.blocks, x)
        assert torch.allclose(out, vit.blocks(x), atol=1e-5)
    assert [tuple(m.shape) for m in maps] == [(3, 2, 17, 17)] * 2
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 2, 17), atol=1e-6)


def test_weights_match_unfused_timm_attention() -> None:
    """attn @ v with our weights reproduces block.attn(norm1(x)) computed by timm."""
    vit = _tiny_vit()
    block = vit.blocks[0]
    x = _tokens(vit)
    block.attn.fused_attn = False
    with torch.no_grad():
        weights = attention_weights(block, x)  # (B, H, T, T)
        batch, tokens, dim = x.shape
        qkv = block.attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, 2, dim // 2)
        v = qkv.permute(2, 0, 3, 1, 4)[2]  # (B, H, T, d_h)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
        assert torch.allclose(block.attn.proj(mixed), block.attn(block.norm1(x)), atol=1e-5)
    # and a wrong map (uniform attention) does not
    uniform = torch.full_like(weights, 1 / tokens)
    mixed = (uniform @ v).transpose(1, 2).reshape(batch, tokens, dim)
    assert not torch.allclose(block.attn.proj(mixed), block.attn(block.norm1(x)), atol=1e-2)


def test_block_with_attention_has_gradients() -> None:
    vit = _tiny_vit()
    x = _tokens(vit, batch=2).requires_grad_(True)
    out, logits = block_with_attention(vit.blocks[0], x)
    out.sum().backward()
    assert logits.shape == (2, 2, 17, 17)
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_cls_attention_is_head_mean_of_cls_row() -> None:
    attn = torch.zeros(1, 2, 3, 3)
    attn[0, 0, 0] = torch.tensor([0.2, 0.5, 0.3])
    attn[0, 1, 0] = torch.tensor([0.0, 0.1, 0.9])
    assert torch.allclose(cls_attention(attn), torch.tensor([[0.3, 0.6]]))


def test_rollout_hand_worked() -> None:
    # Two layers, one head, T = 2. With the residual, 0.5 A + 0.5 I:
    # A1 = [[.5,.5],[0,1]] -> R1 = [[.75,.25],[0,1]]
    # A2 = [[1,0],[.5,.5]] -> R2 = [[1,0],[.25,.75]]
    # rollout = R2 @ R1 = [[.75,.25],[.1875,.8125]] -> CLS row over patches: [.25]
    a1 = torch.tensor([[0.5, 0.5], [0.0, 1.0]]).view(1, 1, 2, 2)
    a2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).view(1, 1, 2, 2)
    assert torch.allclose(attention_rollout([a1, a2]), torch.tensor([[0.25]]))
    # Without the residual: A2 @ A1 = [[.5,.5],[.25,.75]] -> [.5]
    assert torch.allclose(attention_rollout([a1, a2], add_residual=False), torch.tensor([[0.5]]))
    # The order matters: A1 @ A2 = [[.75,.25],[.5,.5]] would give .25 without residual.
    assert torch.allclose(attention_rollout([a2, a1], add_residual=False), torch.tensor([[0.25]]))


def test_rollout_averages_heads_and_batches() -> None:
    torch.manual_seed(0)
    attns = [torch.rand(4, 3, 5, 5).softmax(-1) for _ in range(3)]
    rollout = attention_rollout(attns)
    assert rollout.shape == (4, 4)
    for b in range(4):  # the vectorised result equals the per-sample computation
        expected = attention_rollout([a[b : b + 1] for a in attns])
        assert torch.allclose(rollout[b : b + 1], expected)


def test_psm_per_head_product_and_argmax() -> None:
    # Per head, the CLS row of A2 @ A1 (no head mean, no residual):
    # head 0: A1 = I, so it is A2's CLS row [0, .2, .8] -> patch 1 (token 2).
    # head 1: A1 swaps tokens 0 and 2: [0, .3, .7] @ A1 = [.7, .3, 0] -> patch 0.
    eye = torch.eye(3)
    a1 = torch.stack([eye, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])])
    a2 = torch.stack(
        [
            torch.tensor([[0.0, 0.2, 0.8], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            torch.tensor([[0.0, 0.3, 0.7], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        ]
    )
    scores, index = psm_scores([a1.unsqueeze(0), a2.unsqueeze(0)])
    assert torch.allclose(scores, torch.tensor([[[0.2, 0.8], [0.3, 0.0]]]))
    assert index.tolist() == [[1, 0]]


def test_maws_row_times_normalised_column() -> None:
    logits = torch.zeros(1, 1, 3, 3)
    logits[0, 0, 0] = torch.log(torch.tensor([1.0, 1.0, 2.0]))  # CLS row -> [.25, .25, .5]
    logits[0, 0, :, 0] = torch.log(torch.tensor([1.0, 3.0, 4.0]))  # CLS column -> [.125, .375, .5]
    # a * b over patches: [.25 * .375, .5 * .5]
    assert torch.allclose(maws_scores(logits), torch.tensor([[0.09375, 0.25]]))
    two_heads = torch.cat([logits, torch.zeros(1, 1, 3, 3)], dim=1)  # 2nd head uniform
    a = torch.tensor([0.25, 0.5]) / 2 + 1 / 6
    b = torch.tensor([0.375, 0.5]) / 2 + 1 / 6
    assert torch.allclose(maws_scores(two_heads), (a * b).unsqueeze(0))


def test_non_vit_block_is_rejected() -> None:
    with pytest.raises(TypeError, match="not a timm ViT Block"):
        attention_weights(torch.nn.Linear(4, 4), torch.zeros(1, 2, 4))
