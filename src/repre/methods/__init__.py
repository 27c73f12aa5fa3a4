"""Contrastive frameworks, each a small file on `Method`; `METHODS` is the registry.

A framework `NAME` is its `Method` subclass here and, in `repre.config`, a value of `method.name`, a section
`method.NAME` whose fields are its keyword arguments (`FRAMEWORKS` lists those sections; tests/test_architecture.py
checks that they agree).
"""

from __future__ import annotations

import dataclasses

from repre.config import Config
from repre.errors import UserError
from repre.methods.base import Method
from repre.methods.dino import DINO
from repre.methods.moby import MoBY
from repre.methods.mocov3 import MoCoV3
from repre.methods.supervised import Supervised
from repre.models.backbone import Backbone

FRAMEWORK_CLASSES: dict[str, type[Method]] = {  # method.NAME: the class, its keyword arguments that section's keys
    "mocov3": MoCoV3,
    "dino": DINO,
    "moby": MoBY,
}
METHODS: dict[str, type[Method]] = {**FRAMEWORK_CLASSES, "supervised": Supervised}  # every method.name


def eval_encoder_key(method_name: str) -> str:
    """The attribute of the method whose backbone evaluation and export use ("encoder" or "teacher_encoder")."""
    return _method_class(method_name).eval_encoder_key


def build_method(cfg: Config, encoder: Backbone, num_classes: int | None = None) -> Method:
    """The configured method around `encoder`; `num_classes` (of the training data) for supervised."""
    name = cfg.method.name
    cls = _method_class(name)
    if cls is Supervised:
        if not num_classes:
            raise UserError("method.name=supervised trains a classifier: it needs the class count of labelled "
                            "data (pre-training reads it from the data: class sub-folders, indexed shards with "
                            ".cls labels, a python source's classes, Fashion-MNIST, synthetic; streamed shards "
                            "give none; in Python, build_model(cfg, num_classes=N))")
        return Supervised(encoder, num_classes)
    return cls(encoder, **dataclasses.asdict(getattr(cfg.method, name)))


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method.name {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["DINO", "FRAMEWORK_CLASSES", "METHODS", "Method", "MoBY", "MoCoV3", "Supervised", "build_method",
           "eval_encoder_key"]
