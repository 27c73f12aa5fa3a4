"""Contrastive frameworks, each a small file on `Method`; `build_method` is the registry."""

from __future__ import annotations

from collections.abc import Callable

from repre.config import Config
from repre.errors import UserError
from repre.methods.base import Method
from repre.methods.mocov3 import MoCoV3
from repre.methods.supervised import Supervised
from repre.models.backbone import Backbone


def _mocov3(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    m = cfg.method
    return MoCoV3(encoder, m.proj_dim, m.mlp_dim, m.temperature, m.freeze_patch_embed)


def _supervised(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    if not num_classes:
        raise UserError("method.name=supervised needs a labelled dataset (class sub-folders, Fashion-MNIST, synthetic)")
    return Supervised(encoder, num_classes)


METHODS: dict[str, Callable[[Config, Backbone, int | None], Method]] = {"mocov3": _mocov3, "supervised": _supervised}


def build_method(cfg: Config, encoder: Backbone, num_classes: int | None = None) -> Method:
    """The configured method around `encoder`; `num_classes` (of the training data) for supervised."""
    if cfg.method.name not in METHODS:
        raise UserError(f"unknown method.name {cfg.method.name!r}; choose from {', '.join(METHODS)}")
    return METHODS[cfg.method.name](cfg, encoder, num_classes)


__all__ = ["METHODS", "Method", "MoCoV3", "Supervised", "build_method"]
