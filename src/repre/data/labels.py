"""Labels of an image source: their names, the checks that the images a task reads are labelled with the
training images' classes (before any image is read where a source indexes its labels), and the one text of
where labels come from."""

from __future__ import annotations

import torch

from repre.data.sources import ImageSource
from repre.errors import UserError


def class_names(source: ImageSource) -> list[str] | None:
    """The names of a source's labels in label order (a folder's class folders, Fashion-MNIST's classes); None
    where its labels have none (or it has no labels)."""
    names = getattr(source, "classes", None)
    return list(names) if names else None


def class_name(names: list[str] | None, label: int | None) -> str | None:
    """The name of `label` among a source's `names` (`class_names`); None without names or a label (-1, None),
    or for a label the names do not reach."""
    return names[label] if names and label is not None and 0 <= label < len(names) else None


# where labels come from, for a message saying that some are missing
LABELS_FROM = ("labels come from class sub-folders (train/<class>/..., val/<class>/...; the sub-folder is the "
               "class), a KEY.cls per sample in shards, or `classes` on a dataset of your own code (data.name=python)")


def check_labels(labels: torch.Tensor | None, classes: int, task: str, images: str) -> None:
    """Every label [N] of the `images` that `task` read is one of the training images' `classes`: an image
    without one (-1: a loose file beside class folders, a shard sample without its .cls) or with a class they
    lack would be counted as another class, or fail inside the loss."""
    if labels is None:
        raise UserError(f"{task}: the {images} have no labels, as the training images have; {LABELS_FROM}")
    unlabelled, beyond = int((labels < 0).sum()), sorted({int(v) for v in labels[labels >= classes]})
    if unlabelled or beyond:
        said = ", ".join(([f"{unlabelled} without a label (a file beside the class folders, or a shard sample "
                           "without its .cls: shards where some lack one are read as unlabelled, all of them)"]
                          if unlabelled else []) +
                         ([f"labels {beyond[:5]} beyond the training images' {classes} classes"] if beyond else []))
        raise UserError(f"{task}: of the {images}, {said}; give every image one of the training images' classes")


def known_labels(source: ImageSource) -> torch.Tensor | None:
    """A source's labels [N] where it holds them in an index (folders, shards, Fashion-MNIST; a selection of
    one), without reading an image; None where only loading tells (a dataset of your own code, a stream)."""
    picked = getattr(source, "indices", None)
    labels = known_labels(source.source) if hasattr(source, "source") else getattr(source, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    return labels[torch.as_tensor(picked)] if picked is not None else labels


def check_source_labels(source: ImageSource, classes: int, task: str, images: str) -> None:
    """`check_labels` on a source's indexed labels, before any image is read (every process alike)."""
    labels = known_labels(source)
    if labels is not None:
        check_labels(labels, classes, task, images)


def labelled(source: ImageSource, task: str) -> int:
    """The number of classes of `source`; exit 2 saying that `task` needs labels when it has fewer than two (one
    class: every prediction right, a score that says nothing; a folder nested one level too deep)."""
    if not source.num_classes:
        raise UserError(f"{task} needs labels, which these images have not: {LABELS_FROM}")
    if source.num_classes < 2:
        names = class_names(source) or ["one"]
        raise UserError(f"{task} needs at least 2 classes; these images have one ({names[0]}): a folder's classes "
                        "are the sub-folders right under train/ and val/ (or under data.root)")
    return source.num_classes
