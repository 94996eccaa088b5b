"""glsim/train/loop.py + checkpoint.py: exact resumption, stale checkpoints, the LR schedule,
NaN guard, the training step and host reads, model-defined losses and atomic checkpoint files."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from glsim.models import create_model
from glsim.train.checkpoint import CHECKPOINT_NAME, TrainState, load_checkpoint, save_checkpoint
from glsim.train.distributed import SINGLE
from glsim.train.loop import (
    Recipe,
    TrainingDiverged,
    _unwrap,
    after_optimizer_step,
    build_optimizer,
    compute_loss,
    distribute,
    fit,
    load_trained,
    train_step,
)

TINY_VIT = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
NUM_CLASSES, IMAGE_SIZE, BATCH, STEPS = 3, 32, 4, 3
CPU = torch.device("cpu")


def tiny_vit(num_classes: int = NUM_CLASSES, init_seed: int = 0) -> nn.Module:
    torch.manual_seed(init_seed)
    return create_model(
        "vit",
        num_classes=num_classes,
        image_size=IMAGE_SIZE,
        backbone="vit_tiny_patch16_224",
        backbone_overrides=dict(TINY_VIT),
        drop_path_rate=0.1,
    )


def loader_for_epoch(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Data fixed by ``epoch``; flip + noise drawn from the global torch RNG (the loop reseeds it)."""
    g = torch.Generator().manual_seed(1000 + epoch)
    for _ in range(STEPS):
        images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
        flip = torch.rand(BATCH) < 0.5  # global RNG
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        yield images + 0.1 * torch.randn_like(images), labels


def recipe(**kw) -> Recipe:
    base = dict(epochs=3, lr=0.05, warmup_steps=2, label_smoothing=0.1, amp=False, log_every=1)
    return Recipe(**{**base, **kw})


def run(model: nn.Module, out_dir: Path, rec: Recipe | None = None, **kw) -> TrainState:
    return fit(
        model,
        loader_for_epoch=kw.pop("loader", loader_for_epoch),
        steps_per_epoch=STEPS,
        recipe=rec or recipe(),
        out_dir=out_dir,
        seed=1,
        device=CPU,
        **kw,
    )


def losses(state: TrainState) -> list[tuple[float, float]]:
    return [(h["train/loss"], h["train/acc"]) for h in state.history]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"weights differ at {k}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: fast on a shared 2-core machine, and the same for every run compared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(_one_thread, tmp_path_factory) -> tuple[nn.Module, TrainState]:
    """One uninterrupted 3-epoch run under run_key 'ref'."""
    model = tiny_vit()
    state = run(model, tmp_path_factory.mktemp("ref"), run_key="ref")
    return model, state


# ---------------------------------------------------------------------------------------
# (a) exact resumption


def test_killed_and_resumed_run_is_bit_identical(reference, tmp_path):
    ref_model, ref_state = reference
    first = run(tiny_vit(), tmp_path, stop_after_epochs=1, run_key="ref")
    assert (first.epoch, first.step, len(first.history)) == (1, STEPS, 1)
    assert (tmp_path / CHECKPOINT_NAME).is_file()

    torch.manual_seed(12345)  # a new process: different global RNG state and initial weights
    resumed_model = tiny_vit(init_seed=7)
    resumed = run(resumed_model, tmp_path, run_key="ref")

    assert (resumed.epoch, resumed.step) == (3, 3 * STEPS)
    assert losses(resumed) == losses(ref_state)
    assert_same_weights(resumed_model, ref_model)


def test_resume_check_is_sensitive_to_reseeding(reference, tmp_path, monkeypatch):
    """Guard for the test above: without the per-epoch reseed the resumed run diverges."""
    _, ref_state = reference
    monkeypatch.setattr("glsim.train.loop.seed_everything", lambda seed: None)
    torch.manual_seed(1)
    run(tiny_vit(), tmp_path, stop_after_epochs=1, run_key="ref")
    torch.manual_seed(12345)
    resumed = run(tiny_vit(init_seed=7), tmp_path, run_key="ref")
    assert losses(resumed) != losses(ref_state)


def test_history_is_per_epoch(reference):
    _, state = reference
    assert [h["epoch"] for h in state.history] == [1.0, 2.0, 3.0]
    assert all(math.isfinite(loss) for loss, _ in losses(state))
    # different epochs see different data, so epoch losses differ
    assert len({loss for loss, _ in losses(state)}) == 3


def test_finished_run_is_not_trained_again(reference, tmp_path):
    ref_model, ref_state = reference
    run(tiny_vit(), tmp_path, run_key="ref")
    again_model = tiny_vit(init_seed=3)
    again = run(again_model, tmp_path, run_key="ref")
    assert again.epoch == 3 and losses(again) == losses(ref_state)
    assert_same_weights(again_model, ref_model)


def test_load_trained_restores_final_weights(reference, tmp_path):
    ref_model, _ = reference
    run(tiny_vit(), tmp_path, run_key="ref")
    fresh = tiny_vit(init_seed=9)
    info = load_trained(fresh, tmp_path)
    assert (info["epoch"], info["step"], len(info["history"])) == (3, 3 * STEPS, 3)
    assert_same_weights(fresh, ref_model)


# ---------------------------------------------------------------------------------------
# (b) checkpoints of another configuration


def test_checkpoint_of_other_run_key_is_moved_aside(reference, tmp_path):
    ref_model, ref_state = reference
    run(tiny_vit(), tmp_path, stop_after_epochs=1, run_key="other")
    other_bytes = (tmp_path / CHECKPOINT_NAME).read_bytes()

    model = tiny_vit()
    state = run(model, tmp_path, run_key="ref")

    stale = tmp_path / "last.pt.stale"
    assert stale.read_bytes() == other_bytes
    assert (state.epoch, state.step) == (3, 3 * STEPS)  # restarted from epoch 0, not resumed
    assert losses(state) == losses(ref_state)
    assert_same_weights(model, ref_model)
    _, extra = load_checkpoint(tmp_path / CHECKPOINT_NAME, model=tiny_vit())
    assert extra == {"run_key": "ref", "world_size": 1}


def test_restart_after_foreign_checkpoint_uses_own_recipe(reference, tmp_path):
    ref_model, ref_state = reference
    run(tiny_vit(), tmp_path, rec=recipe(momentum=0.5), stop_after_epochs=1, run_key="other")
    model = tiny_vit()
    state = run(model, tmp_path, run_key="ref")
    assert (tmp_path / "last.pt.stale").is_file()
    assert losses(state) == losses(ref_state)
    assert_same_weights(model, ref_model)


def test_foreign_checkpoint_of_other_architecture_is_moved_aside(tmp_path):
    run(tiny_vit(num_classes=5), tmp_path, stop_after_epochs=1, run_key="other")
    state = run(tiny_vit(), tmp_path, rec=recipe(epochs=1), run_key="ref")
    assert (tmp_path / "last.pt.stale").is_file()
    assert state.epoch == 1


# ---------------------------------------------------------------------------------------
# (c) schedule


def test_lr_warms_up_linearly_then_follows_cosine(tmp_path):
    lr, warmup, epochs = 0.08, 4, 3
    logged: dict[int, float] = {}

    def sink(metrics: dict[str, float], step: int) -> None:
        if "train/lr" in metrics:
            logged[step] = metrics["train/lr"]

    run(
        tiny_vit(),
        tmp_path,
        rec=recipe(lr=lr, warmup_steps=warmup, epochs=epochs),
        log_metrics=sink,
    )
    total = epochs * STEPS
    assert sorted(logged) == list(range(1, total + 1))  # log_every=1: every optimiser step
    lrs = [logged[s] for s in range(1, total + 1)]  # lrs[t]: the LR used by step t (0-based)

    # warm-up: a straight line from 0 up to the peak, equal increments
    for t in range(warmup):
        assert lrs[t] == pytest.approx(lr * t / warmup)
    assert lrs[warmup] == pytest.approx(lr)  # peak right after warm-up
    # cosine from the peak to 0 over the remaining steps
    for t in range(warmup, total):
        expected = 0.5 * lr * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        assert lrs[t] == pytest.approx(expected)
    assert all(a > b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))


def test_epoch_metrics_are_logged_at_epoch_end(tmp_path):
    calls: list[tuple[dict[str, float], int]] = []
    run(
        tiny_vit(),
        tmp_path,
        rec=recipe(epochs=2, log_every=100),
        log_metrics=lambda m, s: calls.append((m, s)),
    )
    assert [s for _, s in calls] == [STEPS, 2 * STEPS]
    assert all({"train/loss", "train/acc", "train/epoch_seconds"} <= m.keys() for m, _ in calls)


# ---------------------------------------------------------------------------------------
# (d) NaN guard


def test_nan_loss_raises_naming_the_lr(tmp_path):
    def nan_loader(epoch: int):
        for images, labels in loader_for_epoch(epoch):
            yield torch.full_like(images, float("nan")), labels

    with pytest.raises(FloatingPointError, match=r"lower train\.lr \(now 0\.05\)") as info:
        run(tiny_vit(), tmp_path, loader=nan_loader)
    assert "epoch 0 step 0" in str(info.value)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def nan_at(epoch: int, index: int):
    """``loader_for_epoch`` with NaN images in batch ``index`` of ``epoch`` (NaN from there on)."""

    def loader(e: int):
        for i, (images, labels) in enumerate(loader_for_epoch(e)):
            bad = e == epoch and i == index
            yield (torch.full_like(images, float("nan")) if bad else images), labels

    return loader


def test_nan_mid_run_raises_at_the_next_read_and_keeps_last_good_checkpoint(tmp_path):
    """Loss is read every log_every=2 steps: the NaN of global step 4 is found at step 5."""
    logged: list[int] = []
    with pytest.raises(TrainingDiverged, match=r"lower train\.lr \(now 0\.05\)") as info:
        run(
            tiny_vit(), tmp_path, rec=recipe(log_every=2), loader=nan_at(1, 1),
            log_metrics=lambda m, step: logged.append(step),
        )  # fmt: skip
    msg = str(info.value)
    assert "loss is nan at epoch 1 step 5 (became non-finite in steps 4-5)" in msg
    state, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME, model=tiny_vit())
    assert (state.epoch, state.step) == (1, STEPS)  # epoch 0's; the diverged epoch 1 is not
    assert logged == [2, STEPS, 4]  # step metrics up to the last good read, epoch 0's metrics


def test_nan_is_caught_at_epoch_end_when_log_every_exceeds_the_epoch(tmp_path):
    with pytest.raises(
        TrainingDiverged, match=r"epoch 0 step 2 \(became non-finite in steps 0-2\)"
    ):
        run(tiny_vit(), tmp_path, rec=recipe(log_every=100), loader=nan_at(0, 1))
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_empty_loader_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="yielded no batch"):
        run(tiny_vit(), tmp_path, loader=lambda epoch: iter(()))


# ---------------------------------------------------------------------------------------
# (e) the training step and when the loop reads the device


def test_train_step_returns_device_tensors_not_floats():
    model = tiny_vit()
    rec = recipe()
    optimizer = build_optimizer(model, rec)
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    targets = torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    loss, correct = train_step(
        model, images, targets, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
        scaler=None, clip_grad=1.0, use_amp=False, device_type="cpu",
    )  # fmt: skip
    assert isinstance(loss, Tensor) and isinstance(correct, Tensor)
    assert loss.shape == () and correct.shape == ()
    assert not loss.requires_grad and loss.dtype == torch.float32
    assert not correct.dtype.is_floating_point and 0 <= int(correct) <= BATCH
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("log_every", [2, 100])
def test_log_every_does_not_change_the_optimisation(reference, tmp_path, log_every):
    """Reading the device every k steps instead of every step: bitwise the same run."""
    ref_model, ref_state = reference
    model = tiny_vit()
    state = run(model, tmp_path, rec=recipe(log_every=log_every), run_key="ref")
    assert losses(state) == losses(ref_state)
    assert_same_weights(model, ref_model)


def _count_host_reads(monkeypatch) -> dict[str, int]:
    """Count the tensor -> host reads (``tolist``/``item``) the loop makes."""
    counts = {"reads": 0}
    for name in ("tolist", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_progress_bars_change_nothing_but_stderr(reference, tmp_path, monkeypatch, capsys):
    """Bars on (as on a terminal; forced here) or off: bitwise the same run with the same
    host reads, and one stdout line per epoch; the bar goes to stderr only when on, its
    loss set at the loop's own reads (every ``log_every`` steps)."""
    from glsim.train import loop

    ref_model, ref_state = reference
    postfixes: list[dict] = []
    monkeypatch.setattr(
        loop, "set_postfix", lambda bar, **values: postfixes.append(values) if bar else None
    )
    reads = _count_host_reads(monkeypatch)
    seen: dict[str, tuple[int, str, str]] = {}
    for bars in ("0", "1"):
        monkeypatch.setenv("GLSIM_PROGRESS", bars)
        reads["reads"] = 0
        model = tiny_vit()
        state = run(model, tmp_path / bars, rec=recipe(log_every=2), run_key="ref")
        assert losses(state) == losses(ref_state)
        assert_same_weights(model, ref_model)
        out, err = capsys.readouterr()
        seen[bars] = (reads["reads"], out, err)
    assert seen["0"][0] == seen["1"][0]  # a bar adds no host sync
    for _, out, _ in seen.values():
        assert out.splitlines() == [
            line for line in out.splitlines() if line.startswith("epoch ")
        ] and len(out.splitlines()) == ref_state.epoch
    assert seen["0"][2] == ""
    assert "epoch 1/3" in seen["1"][2] and "step" in seen["1"][2]
    # both runs call it once per read: every 2nd of the run's steps (the count is global)
    assert len(postfixes) == 2 * (ref_state.step // 2)
    assert all(set(p) == {"loss"} for p in postfixes)


# ---------------------------------------------------------------------------------------
# (f) model-defined training loss


class _OwnLoss(nn.Module):
    """A model with ``training_loss``: its forward must not be used for the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, NUM_CLASSES)
        self.calls = 0

    def forward(self, images: Tensor) -> Tensor:
        raise AssertionError("forward called; training_loss should be used")

    def training_loss(
        self, images: Tensor, targets: Tensor, criterion: nn.Module
    ) -> tuple[Tensor, Tensor]:
        self.calls += 1
        logits = self.linear(images)
        return 2.0 * criterion(logits, targets), logits


def test_compute_loss_prefers_training_loss():
    model, crit = _OwnLoss(), nn.CrossEntropyLoss()
    images, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss, logits = compute_loss(model, images, targets, crit)
    assert model.calls == 1
    assert torch.allclose(loss, 2.0 * crit(model.linear(images), targets))
    assert logits.shape == (5, NUM_CLASSES)


def test_compute_loss_without_training_loss_is_criterion_on_logits():
    model, crit = nn.Linear(4, NUM_CLASSES), nn.CrossEntropyLoss(label_smoothing=0.1)
    images, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss, logits = compute_loss(model, images, targets, crit)
    assert torch.equal(logits, model(images))
    assert torch.equal(loss, crit(logits, targets))


def test_fit_uses_training_loss(tmp_path):
    model = _OwnLoss()

    def loader(epoch: int):
        g = torch.Generator().manual_seed(epoch)
        for _ in range(STEPS):
            yield (
                torch.randn(BATCH, 4, generator=g),
                torch.randint(0, NUM_CLASSES, (BATCH,), generator=g),
            )

    state = run(model, tmp_path, rec=recipe(epochs=2), loader=loader)
    assert model.calls == 2 * STEPS
    assert state.step == 2 * STEPS


# ---------------------------------------------------------------------------------------
# (g) checkpoint files


def test_checkpoint_dir_holds_only_last_pt(tmp_path):
    run(tiny_vit(), tmp_path, rec=recipe(epochs=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_failed_checkpoint_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    run(tiny_vit(), tmp_path, stop_after_epochs=1)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def torn_save(obj, f, *args, **kwargs):  # f: the open temp file
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        run(tiny_vit(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_corrupt_checkpoint_error_names_path_and_fix(tmp_path):
    ckpt = tmp_path / CHECKPOINT_NAME
    ckpt.write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError) as info:
        run(tiny_vit(), tmp_path)
    msg = str(info.value)
    assert str(ckpt) in msg
    assert "delete it to restart the run" in msg


def test_save_and_load_checkpoint_round_trip(tmp_path):
    model = tiny_vit()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).sum().backward()
    opt.step()
    state = TrainState(epoch=2, step=7, history=[{"train/loss": 1.5}])
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scaler=None, state=state, extra={"k": 1}
    )

    other = tiny_vit(init_seed=5)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    loaded, extra = load_checkpoint(path, model=other, optimizer=other_opt)
    assert loaded == state and extra == {"k": 1}
    assert_same_weights(other, model)
    bufs = [s["momentum_buffer"] for s in other_opt.state.values()]
    assert len(bufs) == len(list(model.parameters())) and all(b is not None for b in bufs)


def test_cpu_bf16_autocast_trains_in_bfloat16_and_changes_the_run(tmp_path):
    """train.cpu_amp: the CPU forward pass runs under bfloat16 autocast (float32 weights and
    optimiser), the run finishes with finite losses, and it is another run than float32."""
    assert recipe(cpu_amp=True).autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert recipe(cpu_amp=False).autocast_dtype(torch.device("cpu")) is None
    assert recipe(amp=True).autocast_dtype(torch.device("cuda")) == torch.float16
    seen = []
    model = tiny_vit()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last_linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    state = run(model, tmp_path / "bf16", rec=recipe(cpu_amp=True), run_key="bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(h["train/loss"]) for h in state.history)
    fp32 = tiny_vit()
    run(fp32, tmp_path / "fp32", rec=recipe(), run_key="fp32")
    assert any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), fp32.parameters(), strict=True)
    )


@pytest.mark.parametrize(("setting", "native", "expected"), [
    ("off", True, False), ("bf16", False, True), ("auto", True, True), ("auto", False, False),
])  # fmt: skip
def test_cpu_amp_param_resolves_by_the_cpu(monkeypatch, setting, native, expected):
    from glsim.config import Params
    from glsim.train import run as run_module

    monkeypatch.setattr("glsim.utils.cpu_bf16_is_faster", lambda: native)
    params = Params.model_validate({"train": {"cpu_amp": setting}})
    assert run_module.recipe(params).cpu_amp is expected


# ---------------------------------------------------------------------------------------
# torch.compile: an execution choice on the same parameters


class _Hooked(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.hooks = nn.Linear(4, 2), 0

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def after_optimizer_step(self) -> None:
        self.hooks += 1


def test_compiled_step_wraps_the_model_and_keeps_its_hook():
    model = _Hooked()
    net = distribute(model, nn.CrossEntropyLoss(), SINGLE, CPU, compile_step=True)
    assert net is not model and _unwrap(net) is model
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    after_optimizer_step(net)
    assert model.hooks == 1
    assert distribute(model, nn.CrossEntropyLoss(), SINGLE, CPU) is model  # eager, alone


@pytest.mark.slow
def test_compiled_run_trains_and_resumes_the_eager_checkpoint(reference, tmp_path):
    """Inductor on the CPU (needs a C compiler): two compiled epochs, then the eager loop
    resumes their checkpoint; the losses follow the eager run's to float tolerance."""
    model = tiny_vit()
    compiled = run(model, tmp_path, run_key="ref", compile_step=True, stop_after_epochs=2)
    assert compiled.epoch == 2
    resumed = run(tiny_vit(), tmp_path, run_key="ref")
    assert resumed.epoch == 3
    for (a, _), (b, _) in zip(losses(resumed), losses(reference[1]), strict=True):
        assert math.isclose(a, b, rel_tol=1e-3), (a, b)
