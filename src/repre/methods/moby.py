"""MoBY (Xie et al. 2021, "Self-Supervised Learning with Swin Transformers"): MoCo v2 + BYOL on any backbone.

Online: backbone -> projector -> predictor (2-layer MLPs with batch norm). Target: backbone -> projector, an
EMA of the online ones (no drop path), updated before the key forward. Each view has a queue of earlier
target keys (a ring buffer of `queue_size` L2-normalized keys, initialised with random unit vectors); the
loss sums the two directions: moby_loss(q1, k2, queue of view 2) + moby_loss(q2, k1, queue of view 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repre.core.dist import gather
from repre.losses import moby_loss
from repre.methods.base import Method, MethodOutput, momentum_copy, per_view, stack_views
from repre.models.backbone import Backbone
from repre.models.heads import bn_mlp


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor, ok: torch.Tensor | None = None) -> torch.Tensor:
    """Write `keys` [n, C] into the ring buffer `queue` [K, C] from position `ptr` (a 0-d long tensor),
    wrapping around; when n > K only the newest K are kept. Returns the next position (no host sync).
    `ok` (a 0-d bool tensor): when false, nothing is written and the position stays (a skipped step's keys)."""
    size, n = queue.shape[0], keys.shape[0]
    keys = keys[-size:]
    start = (ptr + (n - keys.shape[0])) % size
    slots = (start + torch.arange(keys.shape[0], device=queue.device)) % size
    new = keys.to(queue.dtype)
    if ok is not None:
        new = torch.where(ok, new, queue[slots])
    queue[slots] = new
    return (ptr + n * (ok.long() if ok is not None else 1)) % size


class MoBY(Method):
    """MoBY on `encoder` (a `Backbone`, or a timm ViT or Swin, wrapped): BYOL's batch-norm MLPs, the target
    encoder and projector (an EMA of the online ones), a queue of target keys per view and the contrastive loss
    at `temperature`. The keyword arguments are `method.moby.*` (config/schema.py: each key's reference);
    forward [B, 2, 3, H, W] -> `MethodOutput`."""

    # no weight decay on biases and norms; Swin's relative position tables decay (Transformer-SSL at 4510de1:
    # moby_main.py:87 builds the optimizer on the MoBY wrapper, which has no no_weight_decay, so
    # optimizer.py:42-45 exempts only 1-D parameters and biases)
    no_decay_1d = True
    # buffers (`register_buffer`): the queues of target keys [queue_size, proj_dim] and their shared position
    queue1: torch.Tensor
    queue2: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self, encoder: Backbone | nn.Module, *, proj_dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2,
        queue_size: int = 4096,
    ) -> None:
        super().__init__()
        encoder = Backbone.from_model(encoder)  # a bare timm ViT or Swin: wrapped
        self.encoder = encoder
        self.projector = bn_mlp(encoder.embed_dim, mlp_dim, proj_dim)
        self.predictor = bn_mlp(proj_dim, mlp_dim, proj_dim)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.register_buffer("queue1", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue2", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def data_notes(self, images: int) -> list[str]:
        size = len(self.queue1)
        if size < images:
            return []
        return [f"method.moby.queue_size={size} keys a view, for {images:,} training images: the queue holds each "
                f"image's older keys about {size / images:.0f} times, so many of its negatives are the image itself; "
                f"--set method.moby.queue_size=N below the images (e.g. {1 << max(0, (images - 1).bit_length() - 1)})"]

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def step_buffers(self) -> list[torch.Tensor]:
        return [self.queue1, self.queue2, self.queue_ptr]

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor | None = None, local_views: None = None,
        taps: Sequence[int] = (),
    ) -> MethodOutput:
        """views: [B, 2, 3, H, W] -> the loss, "embedding_std", and the `taps`' maps of [x1; x2]."""
        x = stack_views(views)
        pooled, maps = self.encoder(x, taps)
        q1, q2 = per_view(pooled, self.projector, self.predictor)
        with torch.no_grad():  # the targets, updated before this forward (`Method.ema_then_forward`)
            k1, k2 = (F.normalize(k.float(), dim=1) for k in per_view(self.target_encoder(x)[0], self.target_projector))
        queue1, queue2 = self.queue1.clone(), self.queue2.clone()  # the loss's copies; the buffers change below
        loss = moby_loss(q1, k2, queue2, self.temperature) + moby_loss(q2, k1, queue1, self.temperature)
        if self.training:  # in eval mode (a validation loss) the queues stay
            k1, k2 = gather(k1), gather(k2)
            ok = torch.isfinite(k1).all() & torch.isfinite(k2).all()  # non-finite keys never enter the queues
            ptr = enqueue(self.queue1, self.queue_ptr, k1, ok)
            enqueue(self.queue2, self.queue_ptr, k2, ok)  # the same rows as queue1's: the two share one pointer
            self.queue_ptr.copy_(ptr)
        return self.outputs(loss, pooled, maps, x)
