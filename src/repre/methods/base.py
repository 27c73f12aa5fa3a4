"""What every framework shares: the online encoder, momentum (EMA) pairs, and what its forward returns."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from repre.core.compat import ema_
from repre.core.dist import all_reduce_sum
from repre.models.backbone import Backbone

# the 0-d values a method with prototypes (DINO) logs, which the collapse watch reads: its teacher's mean
# output entropy (uniform outputs: at most log(prototypes)), and the entropy of the teacher's mean output over
# the batch (exp of it: the prototypes the batch's outputs spread over; near 0 when one prototype takes them all)
TEACHER_ENTROPY = "teacher_entropy"
TEACHER_BATCH_ENTROPY = "teacher_batch_entropy"


def stack_views(views: torch.Tensor) -> torch.Tensor:
    """[B, 2, C, H, W] -> the two views stacked as [x1; x2]: [2B, C, H, W] (one encoder pass for both). Another
    shape is refused: `torch.stack([x1, x2])` ([2, B, ...], view first) would pair images 0 and 1 as one
    image's views, and train on it without an error."""
    if views.ndim != 5 or views.shape[1] != 2:
        raise ValueError(f"views must be [B, 2, C, H, W], the two views of each image (torch.stack([x1, x2], "
                         f"dim=1)), got a tensor of shape {list(views.shape)}")
    return views.transpose(0, 1).reshape(2 * views.shape[0], *views.shape[2:])


def per_view(z: torch.Tensor, *modules: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """z [2B, ...], both views stacked as [x1; x2] -> (z1, z2), each through `modules` in turn: one call per
    view, so that a head's batch norm takes each view's statistics, as the official MoCo v3 and MoBY code."""
    b = z.shape[0] // 2
    views = z[:b], z[b:]
    for module in modules:
        views = module(views[0]), module(views[1])
    return views


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` to be updated by EMA only, without stochastic depth (the targets and teachers
    of the official MoBY and DINO code are built with drop path 0)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    for m in target.modules():
        if hasattr(m, "drop_prob"):  # timm's DropPath
            m.drop_prob = 0.0  # type: ignore[assignment]  # torch types module attributes Tensor | Module
    return target


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: the per-dimension std of L2-normalized embeddings z [N, D], times sqrt(D). About 1
    for embeddings spread over the sphere; toward 0 when every image maps to the same point (SimSiam's measure).
    Under torchrun, of the global batch (each process's sums added): what one process of that batch computes,
    where each process's own would read lower with few images each."""
    z = torch.nn.functional.normalize(z.float(), dim=1)
    count = torch.full((1,), z.shape[0], dtype=z.dtype, device=z.device)
    sums = all_reduce_sum(torch.cat([z.sum(dim=0), z.square().sum(dim=0), count]))  # [2D + 1]
    d, n = z.shape[1], sums[-1]
    mean = sums[:d] / n
    variance = ((sums[d:2 * d] - n * mean.square()) / (n - 1)).clamp_min(0)  # unbiased, as torch.std
    return variance.sqrt().mean() * d ** 0.5


@dataclass
class MethodOutput:
    """What a framework's forward returns: its own loss (`RePre` adds λ · reconstruction to it), 0-d values to log
    ("embedding_std", DINO's "teacher_entropy" and "teacher_batch_entropy"), and for the RePre branch the online
    encoder's maps of the tap units it was asked for ([2B, C_i, h_i, w_i] each, from the same forward as the loss;
    none without taps) and the views they came from, both global views of each image stacked, [x1; x2]:
    [2B, 3, H, W] (where the views a method takes are [B, 2, 3, H, W])."""

    loss: torch.Tensor
    logged: dict[str, torch.Tensor]
    stacked_views: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)


# parameter-name parts of a SwinV2 that skip weight decay (Method.decays)
SWINV2_NO_DECAY = ("logit_scale", "cpb_mlp")


class Method(nn.Module):
    """Base of a framework: `forward(views, labels=None, local_views=None, taps=()) -> MethodOutput`
    (`local_views`: DINO's multi-crop, the other methods receive None; `taps`: the units whose maps the RePre
    branch decodes).

    Subclasses set `self.encoder` (the online backbone) and list their (online, momentum) module pairs in
    `ema_pairs()`. A training step calls `ema_then_forward(views, momentum, ...)`, which updates them with the step's
    momentum before the forward (the targets of a step are the EMA of the weights that step starts from, as
    the official MoCo v3, MoBY and DINO code have them): no framework updates them itself.
    `eval_encoder_key` names the encoder that evaluation and export use (the online one, or DINO's teacher).
    `set_progress(step, total)` runs before each step's forward and `after_backward()` after the gradients are
    clipped, for schedules and gradient rules of a method's own. A buffer that forward updates (DINO's center,
    MoBY's queues) is listed in `step_buffers()`, which a skipped step puts back, and leaves out values that are
    not finite itself (a non-finite teacher or key would stay in it for good in a loop of one's own).
    """

    encoder: Backbone
    eval_encoder_key: str = "encoder"
    # whether a rising contrastive loss means a worse fit (the loss-trend monitor); DINO's loss also moves with
    # its teacher's entropy, which centering and sharpening change on their own
    loss_tracks_fit: bool = True
    # whether biases and norm parameters (1-D) skip weight decay; by default they do not (MoCo v3's official
    # ViT recipe decays all)
    no_decay_1d: bool = False
    # whether forward takes local crops (`local_views`, data.local_crops); the config's MULTI_CROP names these
    multi_crop: bool = False

    @property
    def eval_encoder(self) -> Backbone:
        return getattr(self, self.eval_encoder_key)

    @property
    def prototypes(self) -> int | None:
        """The number of outputs whose teacher entropies forward logs as `TEACHER_ENTROPY` and
        `TEACHER_BATCH_ENTROPY` (None: not logged)."""
        return None

    def outputs(self, loss: torch.Tensor, pooled: torch.Tensor, maps: list[torch.Tensor], x: torch.Tensor,
                **extra: torch.Tensor) -> MethodOutput:
        """What forward returns: the loss, 0-d values to log (the collapse monitor `embedding_std` of the pooled
        features [2B, D] and `extra`), the tap maps and the views x [2B, 3, H, W] they came from."""
        return MethodOutput(loss, {"embedding_std": embedding_std(pooled.detach()), **extra}, x, maps)

    def set_progress(self, step: int, total: int) -> None:
        """Called before the forward of optimizer step `step` (0-based) of `total`."""

    def after_backward(self) -> None:
        """Called after backward and clipping, before the optimizer step."""

    def step_buffers(self) -> list[torch.Tensor]:
        """The buffers forward updates in training (not the EMA copies), put back when the step is skipped."""
        return []

    def logged(self) -> dict[str, float]:
        """This step's values of the method's own schedules (`set_progress`'s) that a train line reports."""
        return {}

    def data_notes(self, images: int) -> list[str]:
        """Warnings about training on `images` images, said before the first step (MoBY: a queue that holds
        each image several times)."""
        return []

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules: each step moves the target's parameters toward the online ones'
        (`update_momentum`); a method without a momentum encoder has none."""
        return []

    def ema_then_forward(self, views: torch.Tensor, momentum: float, labels: torch.Tensor | None = None,
                         local_views: torch.Tensor | None = None, taps: Sequence[int] = ()) -> MethodOutput:
        """A training step's forward: the momentum targets moved toward the online weights (`update_momentum`
        with this step's `momentum`), then `forward`. In eval mode (a validation loss) the targets stay, as
        every state a forward updates does (DINO's center, MoBY's queues), like batch norm's statistics. Not for
        a subclass to override. Local crops to a method without them (`multi_crop`) raise ValueError: they
        would be left out silently."""
        if local_views is not None and local_views.shape[1] and not self.multi_crop:
            raise ValueError(f"{type(self).__name__} takes no local crops (local_views of shape "
                             f"{list(local_views.shape)}): DINO does; give local_views=None")
        if self.training:
            self.update_momentum(momentum)
        return self(views, labels, local_views, taps=taps)

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """target = target * m + online * (1 - m) for every parameter of every pair."""
        targets: list[torch.Tensor] = []
        sources: list[torch.Tensor] = []
        for online, target in self.ema_pairs():
            for p_o, p_t in zip(online.parameters(), target.parameters(), strict=True):
                targets.append(p_t)
                sources.append(p_o.detach())
        if targets:
            ema_(targets, sources, m)

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """Whether weight decay applies to a parameter (all, or all but biases and 1-D ones: `no_decay_1d`).

        A SwinV2's attention temperatures and position-bias MLPs never decay, under any framework: decay would
        pull each temperature (`logit_scale`, a log) to 0, flattening attention. No framework's official code
        trained a SwinV2; this is SwinV2's own rule (timm's `SwinTransformerV2.no_weight_decay`)."""
        if any(key in name for key in SWINV2_NO_DECAY):
            return False
        return not (self.no_decay_1d and (name.endswith(".bias") or param.ndim == 1))

    def param_groups(self, weight_decay: float, module: nn.Module | None = None) -> list[dict]:
        """AdamW groups for the trainable parameters of `module` (default: this method), split by `decays`.

        A wrapper such as the RePre branch passes itself so that its decoder joins the same rule.
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in (module or self).named_parameters():
            if p.requires_grad:
                (decay if self.decays(name, p) else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay, "decays": True}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "decays": False})
        return groups
