"""Backbone (timm wrapper: pooled embedding + tap maps), heads, and the RePre decoder."""

from repre.models.backbone import SMALL_CONFIGS, Backbone, resolve_arch, resolve_taps
from repre.models.decoder import Decoder
from repre.models.heads import mlp

__all__ = ["SMALL_CONFIGS", "Backbone", "Decoder", "mlp", "resolve_arch", "resolve_taps"]
