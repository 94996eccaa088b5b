"""Self-distillation upstream task (DINO, Caron et al. 2021): no labels, a student and an
EMA teacher over multi-crop views, for CLS-to-patch similarity that picks out the object.

Images x (B, 3, S, S); G global views at S px (area fraction in ``global_scale``), L local
views at ``local_size`` px (area in ``local_scale``), each flipped at random; V = G + L.
A projection head h (MLP, L2-normalised bottleneck, weight-normalised last layer of width K)
sits on the backbone's CLS feature f(v) (D).

    student     p_v = log_softmax(h_s(f_s(v)) / T_s)              v = 1..V     (V, B, K)
    teacher     q_g = softmax((h_t(f_t(v_g)) - c) / T_t)          g = 1..G     (G, B, K)
    loss        L = mean over pairs (g, v), v != g, of  mean_B  -sum_k q_g[k] p_v[k]
    centre      c <- m_c c + (1 - m_c) mean_{g, B} h_t(f_t(v_g))                 (1, K)
    teacher     theta_t <- m_i theta_t + (1 - m_i) theta_s  after optimiser step i,
                m_i = 1 - (1 - m) (cos(pi i / I) + 1) / 2  (I: the run's steps)

The teacher has no gradient; its sharpening (T_t < T_s) and the centring together keep
the outputs from collapsing. The pair losses are averaged, as in DINO's code.

:class:`SelfDistillation` holds student, teacher, both heads, ``c`` and ``i`` in one module,
so the loop's checkpoint (its ``state_dict``) resumes all of them exactly. Its
``training_loss`` is what :func:`glsim.train.loop.compute_loss` calls, and its
``after_optimizer_step`` the teacher's update the loop calls after each step.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

# training_loss's "logits" and its loader's targets: argmax 0 where the student's second view
# agrees with the teacher's first, so the loop's train/acc is the teacher-student agreement
AGREE = 0


class ProjectionHead(nn.Module):
    """DINO's head: MLP D -> H -> H -> bottleneck, L2-normalised, then a weight-normalised
    linear layer to K whose norm is fixed at 1 (``norm_last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int, bottleneck_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )  # fmt: skip
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)  # g: the row norms
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, features: Tensor) -> Tensor:
        z = F.normalize(self.mlp(features), dim=-1)  # (B, bottleneck)
        return self.last(z)  # (B, K)


def random_resized_views(
    images: Tensor, count: int, size: int, scale: tuple[float, float]
) -> Tensor:
    """``count`` random-resized, randomly flipped crops of every image, batched.

    Each crop covers a fraction of the image area drawn from ``scale`` with an aspect ratio
    log-uniform in [3/4, 4/3], at a uniform position inside the image, resampled to
    ``size`` px (bilinear); half of them flipped. Draws from torch's global generator (the
    loop seeds it per epoch).

    Args:
        images: (B, C, S, S).

    Returns:
        (count * B, C, size, size), view-major: rows v*B .. (v+1)*B - 1 are view v.
    """
    b = images.shape[0]
    n, device = count * b, images.device
    area = torch.empty(n, device=device).uniform_(*scale)  # (n,)
    ratio = torch.empty(n, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # (n,) fractions of the side
    h = (area / ratio).sqrt().clamp(max=1.0)
    x0 = torch.rand(n, device=device) * (1 - w)
    y0 = torch.rand(n, device=device) * (1 - h)
    flip = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    # output u in [-1, 1] samples input 2 * (x0 + w/2) - 1 + w * u (grid_sample's frame)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, 2 * x0 + w - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * y0 + h - 1
    source = images.repeat(count, 1, 1, 1)  # (n, C, S, S), view-major
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(source, grid.to(images.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)  # fmt: skip


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over pairs (g, v), v != g, of the batch mean of -sum_k q_g[k] p_v[k].

    Args:
        student: (V, B, K) log-probabilities p_v, the G global views first.
        teacher: (G, B, K) probabilities q_g of the global views.
    """
    g, v = teacher.shape[0], student.shape[0]
    ce = -torch.einsum("gbk,vbk->gv", teacher, student) / student.shape[1]  # (G, V)
    other = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)  # (G, V): v != g
    return ce[other].mean()


class SelfDistillation(nn.Module):
    """Student backbone + head, their EMA teacher, the centre and the EMA step count."""

    def __init__(
        self,
        backbone: VisionTransformer,
        *,
        total_steps: int,
        global_crops: int = 2,
        local_crops: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.1, 0.4),
        local_size: int = 32,
        out_dim: int = 1024,
        hidden_dim: int = 256,
        bottleneck_dim: int = 64,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        momentum: float = 0.996,
        centre_momentum: float = 0.9,
    ):
        super().__init__()
        if backbone.num_classes != 0:
            raise ValueError("SelfDistillation: build the backbone with num_classes=0")
        self.student = backbone
        self.student_head = ProjectionHead(
            backbone.num_features, out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim
        )
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.register_buffer("centre", torch.zeros(1, out_dim))  # c
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # i
        self.total_steps = max(1, total_steps)
        self.global_crops, self.local_crops = global_crops, local_crops
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.local_size = local_size
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.momentum, self.centre_momentum = momentum, centre_momentum

    def no_weight_decay(self) -> set[str]:
        """The student's position embedding and CLS token go without weight decay, as in
        timm's ViT recipe (the teacher is not optimised)."""
        return {f"student.{name}" for name in self.student.no_weight_decay()}

    def train(self, mode: bool = True) -> SelfDistillation:
        super().train(mode)
        self.teacher.eval()  # no drop-path in the teacher
        return self

    def training_loss(
        self, images: Tensor, targets: Tensor, criterion: nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        """The distillation loss of a batch of unlabelled images, and the centre's update.

        ``targets`` and ``criterion`` are the loop's and unused. Returns ``(loss,
        agreement)``: agreement (B, 2) has its argmax at :data:`AGREE` where the student's
        second view and the teacher's first pick the same output dimension.
        """
        b = images.shape[0]
        global_views = random_resized_views(
            images, self.global_crops, images.shape[-1], self.global_scale
        )  # (G*B, 3, S, S)
        student = self.student_head(self.student(global_views))  # (G*B, K)
        if self.local_crops:
            local_views = random_resized_views(
                images, self.local_crops, self.local_size, self.local_scale
            )  # (L*B, 3, s, s)
            local = self.student_head(self.student(local_views))  # (L*B, K)
            student = torch.cat([student, local])  # (V*B, K)
        student = F.log_softmax(student.float() / self.student_temp, dim=-1)
        student = student.view(-1, b, student.shape[-1])  # (V, B, K)
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher(global_views)).float()  # (G*B, K)
            teacher = F.softmax((teacher_out - self.centre) / self.teacher_temp, dim=-1)
            teacher = teacher.view(self.global_crops, b, -1)  # (G, B, K)
        loss = distillation_loss(student, teacher)
        with torch.no_grad():
            self._update_centre(teacher_out)
            agree = student[1].argmax(-1) == teacher[0].argmax(-1)  # (B,): V >= 2 views
            agreement = torch.stack([agree, ~agree], dim=-1).float()  # (B, 2)
        return loss, agreement

    @torch.no_grad()
    def _update_centre(self, teacher_out: Tensor) -> None:
        """c <- m_c c + (1 - m_c) mean of the teacher's outputs (over every rank's batch)."""
        batch_centre = teacher_out.mean(dim=0, keepdim=True)  # (1, K)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_centre)
            batch_centre /= torch.distributed.get_world_size()
        self.centre.mul_(self.centre_momentum).add_(batch_centre, alpha=1 - self.centre_momentum)

    def teacher_momentum(self) -> Tensor:
        """m_i: from ``momentum`` at step 0 to 1 at the last step, on a cosine; a tensor on
        the model's device (no host sync per step)."""
        progress = self.ema_steps.clamp(max=self.total_steps).double() / self.total_steps
        return 1 - (1 - self.momentum) * (torch.cos(math.pi * progress) + 1) / 2

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """theta_t <- m_i theta_t + (1 - m_i) theta_s, backbone and head; then i += 1."""
        m = self.teacher_momentum().float()
        for student, teacher in ((self.student, self.teacher),
                                 (self.student_head, self.teacher_head)):  # fmt: skip
            t = list(teacher.parameters())
            torch._foreach_mul_(t, m)
            torch._foreach_add_(t, torch._foreach_mul(list(student.parameters()), 1 - m))
        self.ema_steps += 1


def knn_classify(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, *, num_classes: int, k: int = 20,
    temperature: float = 0.07,
) -> Tensor:  # fmt: skip
    """DINO's weighted k-NN classifier: each query's ``k`` most cosine-similar bank features
    vote for their labels with weight exp(similarity / temperature); returns the (Q,)
    predicted labels.

    Args:
        bank: (N, D) features; bank_labels: (N,) int64; queries: (Q, D).
    """
    similarity = F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T  # (Q, N)
    top, index = similarity.topk(min(k, bank.shape[0]), dim=-1)  # (Q, k)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=top.dtype)  # (Q, C)
    votes.scatter_add_(1, bank_labels[index], (top / temperature).exp())
    return votes.argmax(-1)
