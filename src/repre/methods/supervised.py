"""Supervised pre-training: the reference the paper compares transfer against.

The same encoder and views as the self-supervised methods, trained with labels: a linear classifier on
the pooled embedding of every view, cross-entropy with label smoothing. Needs a labelled dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repre.errors import UserError
from repre.methods.base import Method, MethodOutput, stack_views
from repre.models.backbone import Backbone


class Supervised(Method):
    """The supervised reference on `encoder` (a `Backbone`, or a timm ViT or Swin, wrapped): a linear classifier
    of `num_classes` on every view's pooled embedding, cross-entropy with `label_smoothing`; forward
    [B, 2, 3, H, W] and labels [B] -> `MethodOutput`."""

    def __init__(self, encoder: Backbone | nn.Module, num_classes: int, label_smoothing: float = 0.1) -> None:
        super().__init__()
        encoder = Backbone.from_model(encoder)  # a bare timm ViT or Swin: wrapped
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        self.label_smoothing = label_smoothing
        self.labels_checked = False  # on an accelerator, the first batch's labels are checked alone (`check_labels`)

    def check_labels(self, labels: torch.Tensor | None) -> None:
        """Refuse a batch with an unlabelled image (label -1). Labels on the host are checked at every step; on
        an accelerator only the first batch's: reading a device tensor's value waits for the device, each step.
        A dataset is labelled throughout or not at all (shards with some labels missing read as unlabelled)."""
        if labels is not None and self.labels_checked and labels.device.type != "cpu":
            return
        if labels is None or bool((labels < 0).any()):
            raise UserError("method.name=supervised needs labelled images (class sub-folders or a labelled dataset)")
        self.labels_checked = True

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor | None = None, local_views: None = None,
        taps: Sequence[int] = (),
    ) -> MethodOutput:
        """views: [B, 2, 3, H, W], labels: [B] -> the loss, "embedding_std", and the `taps`' maps of [x1; x2]."""
        self.check_labels(labels)
        assert labels is not None  # refused by check_labels
        x = stack_views(views)
        pooled, maps = self.encoder(x, taps)
        loss = F.cross_entropy(self.head(pooled).float(), labels.repeat(2), label_smoothing=self.label_smoothing)
        return self.outputs(loss, pooled, maps, x)
