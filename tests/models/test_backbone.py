"""glsim/models/backbone.py: a timm ViT by name, weights from a local file in every supported
format (never the head), and errors that name the file, the problem and the fix."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from tiny import TINY_VIT

from glsim.models.backbone import WeightsError, create_vit, load_vit_weights
from glsim.train.pretrain import save_vit_weights

NAME = "vit_tiny_patch16_224"


def vit(image_size: int = 32, num_classes: int = 0, **overrides) -> VisionTransformer:
    return create_vit(
        NAME, image_size=image_size, num_classes=num_classes, **{**TINY_VIT, **overrides}
    )


def backbone_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def assert_same_backbone(loaded: VisionTransformer, source: VisionTransformer) -> None:
    own, want = backbone_state(loaded), backbone_state(source)
    assert own.keys() == want.keys()
    for k in own:
        torch.testing.assert_close(own[k], want[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------------------------
# names


def test_a_vit_by_name_with_overrides():
    model = vit(num_classes=5)
    assert isinstance(model, VisionTransformer)
    assert (
        model.patch_embed.grid_size == (4, 4) and model.embed_dim == 64 and len(model.blocks) == 2
    )
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("resnet18", {}),  # refuses img_size
        ("eva02_tiny_patch14_224", TINY_VIT),  # takes img_size, but is not a VisionTransformer
    ],
)
def test_a_non_vit_name_is_refused_by_name(name, overrides):
    with pytest.raises(ValueError, match=rf"{name}.*VisionTransformer"):
        create_vit(name, image_size=32, **overrides)


def test_an_unknown_name_is_an_error():
    with pytest.raises(ValueError, match=r"model\.backbone\.name.*Unknown model \(vit_nosuch\)"):
        create_vit("vit_nosuch", image_size=32)


def test_an_override_that_is_no_constructor_argument_is_named():
    with pytest.raises(ValueError, match=r"'depht'.*model\.backbone\.overrides"):
        create_vit(NAME, image_size=32, depht=2)


# ---------------------------------------------------------------------------------------
# round trips


def _torch_flat(model: VisionTransformer, path: Path) -> None:
    torch.save(model.state_dict(), path)  # head included: the loader drops it


def _torch_nested(key: str) -> Callable[[VisionTransformer, Path], None]:
    def write(model: VisionTransformer, path: Path) -> None:
        torch.save({key: model.state_dict(), "epoch": 3}, path)

    return write


WRITERS = {
    "save_vit_weights.safetensors": ("w.safetensors", save_vit_weights),
    "save_vit_weights.pth": ("w.pth", save_vit_weights),
    "torch.save flat.pt": ("w.pt", _torch_flat),
    "torch.save under model.pth": ("w.pth", _torch_nested("model")),
    "torch.save under state_dict.bin": ("w.bin", _torch_nested("state_dict")),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_weights_round_trip_without_the_head(writer, tmp_path):
    fname, write = WRITERS[writer]
    source = vit(num_classes=5)
    path = tmp_path / fname
    write(source, path)

    loaded = create_vit(NAME, image_size=32, num_classes=3, weights=path, **TINY_VIT)
    assert_same_backbone(loaded, source)
    assert loaded.head.weight.shape == (3, 64)  # its own fresh head, never the file's

    same_width = create_vit(NAME, image_size=32, num_classes=5, weights=path, **TINY_VIT)
    assert not torch.equal(same_width.head.weight, source.head.weight)


def test_save_writes_no_head_atomically(tmp_path):
    path = save_vit_weights(vit(num_classes=5), tmp_path / "sub/w.safetensors")
    assert path.is_file() and not any(k.startswith("head.") for k in load_file(path))
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp file left


def test_save_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(WeightsError, match=r"w\.onnx.*'\.onnx'.*\.safetensors"):
        save_vit_weights(vit(), tmp_path / "w.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("saved_at", "loaded_at"), [(48, 32), (32, 48)])
def test_another_image_size_loads_through_pos_embed_resampling(saved_at, loaded_at, tmp_path):
    source = vit(image_size=saved_at)
    path = save_vit_weights(source, tmp_path / "w.safetensors")

    loaded = vit(image_size=loaded_at, weights=path)

    grid = loaded_at // TINY_VIT["patch_size"]
    assert loaded.pos_embed.shape == (1, grid * grid + 1, 64)
    want = resample_abs_pos_embed(
        source.pos_embed.detach(), new_size=(grid, grid), num_prefix_tokens=1
    )
    torch.testing.assert_close(loaded.pos_embed.detach(), want)
    torch.testing.assert_close(loaded.pos_embed[:, 0], source.pos_embed[:, 0])  # CLS position kept
    rest = {k: v for k, v in backbone_state(source).items() if k != "pos_embed"}
    for k, v in rest.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded(torch.randn(1, 3, loaded_at, loaded_at)).shape == (1, 64)


# ---------------------------------------------------------------------------------------
# errors


def test_a_missing_file_names_the_path_and_what_to_do(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(WeightsError, match="weights file not found") as info:
        vit(weights=path)
    message = str(info.value)
    assert str(path) in message and "model.backbone.weights" in message and "pretrain" in message


@pytest.mark.parametrize(
    ("saved_with", "problems"),
    [
        ({"depth": 3}, [r"unexpected keys: \['blocks\.2\.attn\.proj\.bias', .* and 4 more"]),
        ({"depth": 1}, [r"missing keys: \['blocks\.1\."]),
        (
            {"embed_dim": 32},
            [
                r"shape mismatch: \['blocks\.0\.attn\.proj\.bias: file \(32,\) vs model \(64,\)'",
                r"and \d+ more",
            ],
        ),
        ({"depth": 3, "embed_dim": 32}, ["shape mismatch", "unexpected keys"]),
    ],
)
def test_a_file_from_another_architecture_lists_what_does_not_fit(saved_with, problems, tmp_path):
    path = save_vit_weights(vit(**saved_with), tmp_path / "other.safetensors")
    with pytest.raises(WeightsError) as info:
        vit(weights=path)
    message = str(info.value)
    assert message.startswith(f"{path}: does not fit the backbone")
    assert "model.backbone.overrides" in message
    for problem in problems:
        assert re.search(problem, message), (problem, message)


def test_a_layout_timm_cannot_resample_is_a_weights_error(tmp_path):
    state = backbone_state(vit())
    state["pos_embed"] = torch.zeros(1, 11, 64)  # 10 patch positions: no square grid
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=rf"{path}: does not fit the backbone \(RuntimeError"):
        vit(weights=path)


def test_an_unsupported_suffix_is_named(tmp_path):
    path = tmp_path / "w.onnx"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match=r"unsupported weights format '\.onnx'"):
        vit(weights=path)


@pytest.mark.parametrize(
    ("fname", "content", "match"),
    [
        ("w.safetensors", b"not a safetensors file at all", "could not read weights"),
        ("w.pth", b"PK\x03\x04 truncated zip", "could not read weights"),
        ("w.pth", None, "is not a state dict of tensors"),
    ],
)
def test_a_corrupt_file_is_a_weights_error(fname, content, match, tmp_path):
    path = tmp_path / fname
    if content is None:
        torch.save({"blocks.0.norm1.weight": "a string"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as info:
        vit(weights=path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------
# big_vision / JAX .npz


def to_big_vision(model: VisionTransformer) -> dict[str, np.ndarray]:
    """The original JAX ViT layout of a timm ViT (the inverse of timm's ``_load_weights``)."""
    sd = {k: v.detach().numpy() for k, v in backbone_state(model).items()}
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attn = p + "MultiHeadDotProductAttention_1/"
        qkv_w = np.split(sd[b + "attn.qkv.weight"], 3)  # 3 x (D_out, D)
        qkv_b = np.split(sd[b + "attn.qkv.bias"], 3)
        for n, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            out[attn + f"{n}/kernel"] = w.T.reshape(dim, heads, -1)  # (D, H, Dh)
            out[attn + f"{n}/bias"] = bias.reshape(heads, -1)
        proj = sd[b + "attn.proj.weight"]  # (D, H*Dh)
        out[attn + "out/kernel"] = proj.reshape(dim, heads, -1).transpose(1, 2, 0)  # (H, Dh, D)
        out[attn + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[p + f"{ln}/scale"] = sd[b + f"{norm}.weight"]
            out[p + f"{ln}/bias"] = sd[b + f"{norm}.bias"]
        for r in range(2):
            out[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    return out


def test_npz_goes_through_timms_big_vision_reader(tmp_path):
    source = vit()
    path = tmp_path / "ViT-tiny.npz"
    np.savez(path, **to_big_vision(source))
    loaded = vit(weights=path)
    for k, v in backbone_state(source).items():
        torch.testing.assert_close(loaded.state_dict()[k], v, msg=k)


def test_npz_at_another_image_size_is_resampled(tmp_path):
    path = tmp_path / "ViT-tiny-48.npz"
    np.savez(path, **to_big_vision(vit(image_size=48)))
    assert vit(image_size=32, weights=path).pos_embed.shape == (1, 17, 64)


@pytest.mark.parametrize("content", ["wrong keys", "not a zip"])
def test_a_bad_npz_is_a_weights_error(content, tmp_path):
    path = tmp_path / "bad.npz"
    if content == "wrong keys":
        np.savez(path, weights=np.zeros(3))
    else:
        path.write_bytes(b"not an npz")
    with pytest.raises(WeightsError, match=rf"{path}: does not fit VisionTransformer"):
        vit(weights=path)


def test_a_missing_npz_names_the_path(tmp_path):
    path = tmp_path / "gone.npz"
    with pytest.raises(WeightsError, match=rf"weights file not found: {path}"):
        load_vit_weights(vit(), path)
