"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Student: backbone -> DINO head, on the 2 global crops (one batched forward) and the local crops (one forward
at their smaller size: position embeddings are interpolated). Teacher: an EMA of the student (backbone and
head) on the global crops only. Loss: cross-entropy between the centered, sharpened teacher and the student
over every pair of different crops; the center is an EMA of the teacher's batch mean over all processes.

Schedules that are DINO's own live here and follow the run's progress (`set_progress`): the teacher
temperature's linear warm-up and the freezing of the head's last layer. The EMA update runs at the start of a
step, before the teacher forward, with that step's momentum; the official code updates after each optimizer
step with that step's value. So each update here takes the next step's momentum, and the one after the last
step is left out: its momentum would be 1 - (1 - base) * pi² / (4 * steps²) (the cosine of
`repre.core.schedules.momentum_schedule`), 1 - 2e-8 for the Fashion-MNIST preset's 1,600 steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from repre.core.dist import all_reduce_sum, world_size
from repre.losses import center_update, dino_loss, teacher_probs
from repre.methods.base import TEACHER_BATCH_ENTROPY, TEACHER_ENTROPY, Method, MethodOutput, momentum_copy, stack_views
from repre.models.backbone import Backbone
from repre.models.heads import DINOHead


class DINO(Method):
    """DINO on `encoder` (a `Backbone`, or a timm ViT or Swin, wrapped): the student and teacher heads, the
    teacher (an EMA of the student), the center, the temperatures and the last layer's freezing. The keyword
    arguments are `method.dino.*` (config/schema.py: each key's reference); forward [B, 2, 3, H, W] and the
    local crops [B, L, 3, h, w] -> `MethodOutput`."""

    eval_encoder_key = "teacher_encoder"  # DINO evaluates and exports the teacher, as the official code
    no_decay_1d = True  # no weight decay on biases and normalization parameters (the official parameter groups)
    # the loss includes the teacher's entropy (which rises for a while in healthy runs, the Fashion-MNIST
    # baseline's among them), so a rise says nothing of the two losses competing: no loss-trend warning (the
    # gradient cosine of the loss-balance monitor still measures that)
    loss_tracks_fit = False
    multi_crop = True
    center: torch.Tensor  # a buffer (`register_buffer`): [1, out_dim]

    def __init__(
        self,
        encoder: Backbone | nn.Module,
        *,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_fraction: float = 0.1,
        center_momentum: float = 0.9,
        freeze_last_layer_fraction: float = 0.0,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        encoder = Backbone.from_model(encoder)  # a bare timm ViT or Swin: wrapped
        self.encoder = encoder
        self.head = DINOHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer)
        self.teacher_encoder = momentum_copy(encoder)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.student_temp, self.center_momentum = student_temp, center_momentum
        # the teacher temperature's schedule (`set_progress`) and this step's value
        self.teacher_temp_start, self.teacher_temp_end = warmup_teacher_temp, teacher_temp
        self.teacher_temp_warmup = warmup_teacher_temp_fraction
        self.teacher_temp = warmup_teacher_temp if warmup_teacher_temp_fraction > 0 else teacher_temp  # at step 0
        self.freeze_fraction = freeze_last_layer_fraction
        self.freeze_last_layer = freeze_last_layer_fraction > 0

    @property
    def prototypes(self) -> int:
        return self.center.shape[1]

    def step_buffers(self) -> list[torch.Tensor]:
        return [self.center]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def set_progress(self, step: int, total: int) -> None:
        """Teacher temperature: linear from the warm-up value over `warmup_teacher_temp_fraction` of the run
        (value at step i: start + (end - start) * i / warmup), then constant; last layer frozen early on."""
        start, end = self.teacher_temp_start, self.teacher_temp_end
        warmup = round(self.teacher_temp_warmup * total)
        self.teacher_temp = start + (end - start) * step / warmup if step < warmup else end
        self.freeze_last_layer = step < round(self.freeze_fraction * total)

    def logged(self) -> dict[str, float]:
        return {"teacher_temp": self.teacher_temp}

    def after_backward(self) -> None:
        """Drop the last layer's gradients while it is frozen (the optimizer then leaves it untouched)."""
        if self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor | None = None,
        local_views: torch.Tensor | None = None, taps: Sequence[int] = (),
    ) -> MethodOutput:
        """views: [B, 2, 3, H, W] global crops; local_views: [B, L, 3, h, w] or None -> the loss,
        "embedding_std", "teacher_entropy", "teacher_batch_entropy", and the `taps`' maps of the global crops
        [x1; x2]."""
        x = stack_views(views)
        pooled, maps = self.encoder(x, taps)
        student = [self.head(pooled)]
        n_crops = 2
        if local_views is not None and local_views.shape[1]:
            if local_views.shape[-2:] != views.shape[-2:] and not getattr(self.encoder.model, "dynamic_img_size",
                                                                          True):
                raise ValueError(f"local crops of {list(local_views.shape[-2:])} pixels need an encoder that takes "
                                 "another size than its global crops: build the timm model with "
                                 "dynamic_img_size=True (position embeddings interpolated to each crop)")
            n_crops += local_views.shape[1]
            local_pooled, _ = self.encoder(local_views.transpose(0, 1).flatten(0, 1))  # crop-major [L*B, ...]
            student.append(self.head(local_pooled))
        with torch.no_grad():  # the teacher, updated before this forward (`Method.ema_then_forward`)
            teacher = self.teacher_head(self.teacher_encoder(x)[0]).float()
        loss = dino_loss(torch.cat(student), teacher, self.center, n_crops, self.student_temp, self.teacher_temp)
        with torch.no_grad():
            probs = teacher_probs(teacher, self.center, self.teacher_temp)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            used = probs.sum(dim=0)  # [K]: the batch's outputs on each prototype
            if self.training:  # in eval mode (a validation loss) the center stays
                # the teacher's logits and outputs summed over the global batch, in one collective
                total, used = all_reduce_sum(torch.cat([teacher.sum(dim=0), used])).chunk(2)
                new = center_update(self.center, total[None], teacher.shape[0] * world_size(), self.center_momentum)
                # a non-finite teacher batch (its step is skipped) must not poison the center for good; no host sync
                self.center.copy_(torch.where(torch.isfinite(new).all(), new, self.center))
            used = used / used.sum()
            batch_entropy = -(used * used.clamp_min(1e-12).log()).sum()
        return self.outputs(loss, pooled, maps, x, **{TEACHER_ENTROPY: entropy, TEACHER_BATCH_ENTROPY: batch_entropy})
