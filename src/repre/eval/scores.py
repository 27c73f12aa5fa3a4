"""A classifier's top-1 and its scores by class, as k-NN and the linear probes report them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

CONFUSION_CLASSES = 100  # above, the confusion matrix is left out of the result (ImageNet's: a million counts)


def top1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """The fraction of predictions [M] equal to the truth [M], exactly (17/24, not float32's 0.70833331)."""
    return int((pred == truth).sum()) / truth.numel()


def per_class(pred: torch.Tensor, truth: torch.Tensor, classes: int, names: list[str] | None) -> dict[str, Any]:
    """Predicted and true labels [M] -> {"per_class_top1": {class: top-1 of its queries, or None without any},
    "confusion": counts [true][predicted] (classes x classes; up to CONFUSION_CLASSES classes), "classes": the
    names (or None)}. Beyond CONFUSION_CLASSES no classes x classes table is made (21,843 classes: 3.8 GB)."""
    right = torch.bincount(truth[pred == truth], minlength=classes)
    out = _scores(right, torch.bincount(truth, minlength=classes), names)
    if classes <= CONFUSION_CLASSES:
        confusion = torch.zeros(classes, classes, dtype=torch.int64)
        confusion.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
        out["confusion"] = confusion.tolist()
    return out


def scores_of(confusion: torch.Tensor, names: list[str] | None) -> dict[str, Any]:
    """Counts [true][predicted] (classes x classes, on the CPU) -> `per_class`'s scores."""
    out = _scores(confusion.diagonal(), confusion.sum(dim=1), names)
    if confusion.shape[0] <= CONFUSION_CLASSES:
        out["confusion"] = confusion.tolist()
    return out


def _scores(right: torch.Tensor, seen: torch.Tensor, names: list[str] | None) -> dict[str, Any]:
    """Each class's right answers and queries [classes] -> {"per_class_top1", "classes"}."""
    classes = len(seen)
    named = names if names and len(names) == classes else [str(c) for c in range(classes)]
    times = Counter(named)
    named = [n if times[n] == 1 else f"{n} ({c})" for c, n in enumerate(named)]  # a name twice: by label too
    top1 = {n: (int(right[c]) / int(seen[c]) if seen[c] else None) for c, n in enumerate(named)}
    return {"per_class_top1": top1, "classes": names}
