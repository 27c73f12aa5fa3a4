"""Contrastive frameworks, each a small file on `Method`; `build_method` is the registry."""

from __future__ import annotations

from collections.abc import Callable

from repre.config import Config
from repre.errors import UserError
from repre.methods.base import Method
from repre.methods.mocov3 import MoCoV3
from repre.models.backbone import Backbone


def _mocov3(cfg: Config, encoder: Backbone) -> Method:
    m = cfg.method
    return MoCoV3(encoder, m.proj_dim, m.mlp_dim, m.temperature, m.freeze_patch_embed)


METHODS: dict[str, Callable[[Config, Backbone], Method]] = {"mocov3": _mocov3}


def build_method(cfg: Config, encoder: Backbone) -> Method:
    if cfg.method.name not in METHODS:
        raise UserError(f"unknown method.name {cfg.method.name!r}; choose from {', '.join(METHODS)}")
    return METHODS[cfg.method.name](cfg, encoder)


__all__ = ["METHODS", "Method", "MoCoV3", "build_method"]
