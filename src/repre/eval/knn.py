"""Weighted k-NN classification on frozen features (DINO's protocol: k = 20, T = 0.07, cosine similarity).

The train split is the bank, the test split the queries; each neighbour votes with exp(sim / T).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from repre.config import Config
from repre.core.runtime import Runtime
from repre.core.search import top_k
from repre.data.evaluation import eval_loader
from repre.data.labels import check_labels, check_source_labels, class_names, labelled
from repre.eval.features import bar_name, gathered, pooled_embeddings
from repre.eval.scores import per_class, top1
from repre.models.backbone import Backbone

log = logging.getLogger("repre")

def extract_features(encoder: Backbone, loader: DataLoader, rt: Runtime,
                     desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """-> (L2-normalized pooled features [N, D] float32 on CPU, labels [N]): `pooled_embeddings`, gathered."""
    features, labels = gathered(pooled_embeddings(encoder, loader, rt, desc))
    assert labels is not None  # an `eval_loader`'s batches hold labels
    return features, labels


def knn_predict(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, temperature: float, classes: int
) -> torch.Tensor:
    """bank [N, D], queries [M, D] (float32 on the CPU) -> predicted class per query [M]. Both L2-normalized, as
    `pooled_embeddings` gives them. The search goes a chunk of the bank at a time (`core.search`): an
    ImageNet-sized bank against 1,024 queries at once would take 5 GB.

    Each vote is exp((s - s_max) / T), s_max the query's nearest similarity: DINO's exp(s / T) divided by a
    factor common to the query's votes, so the same class wins, but with no overflow to inf at a small T
    (s / T > 88.7 in float32), where DINO's ties every class that has an inf and the lowest wins."""
    sims, rows = top_k(bank.numpy(), queries, min(k, bank.shape[0]))  # [M, k] each, most similar first
    preds = []
    for sim, idx in zip(sims.split(1024), rows.split(1024), strict=True):
        weights = ((sim - sim[:, :1]) / temperature).exp()  # sim[:, :1]: the nearest
        votes = torch.zeros(sim.shape[0], classes).scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_eval(encoder: Backbone, cfg: Config, rt: Runtime, out: Path | None = None, *, say: str = "") -> dict[str, Any]:
    """k-NN top-1 of `encoder` on the configured dataset (train split = bank, test split = queries); `out`: no
    file written. `say`: which k-NN this is, logged with how many images it reads and how to read fewer, once
    the data are known to have labels."""
    e = cfg.eval
    train = eval_loader(cfg, "train", e.knn.train_subset)
    test = eval_loader(cfg, "test", e.knn.test_subset)
    classes = labelled(train.dataset.source, "k-NN")
    check_source_labels(train.dataset.source, classes, "k-NN", "training images (the bank)")
    check_source_labels(test.dataset.source, classes, "k-NN", "held-out images (the queries)")
    if say:
        log.info("%s: the features of %s training images (the bank) and %s held-out ones (the queries); fewer: "
                 "--set eval.knn.train_subset=N --set eval.knn.test_subset=M", say, f"{len(train.dataset):,}",
                 f"{len(test.dataset):,}")
    bank, bank_y = extract_features(encoder, train, rt, bar_name(cfg, "k-NN bank"))
    queries, query_y = extract_features(encoder, test, rt, bar_name(cfg, "k-NN queries"))
    check_labels(bank_y, classes, "k-NN", "training images (the bank)")
    check_labels(query_y, classes, "k-NN", "held-out images (the queries)")
    k = min(e.knn.k, len(bank))  # the k that votes
    if k < e.knn.k:
        log.warning("eval.knn.k=%d is more than the bank's %d images: every image votes", e.knn.k, len(bank))
    pred = knn_predict(bank, bank_y, queries, k, e.knn.temperature, classes)
    accuracy = top1(pred, query_y)
    extra = {"k": k, "temperature": e.knn.temperature, "bank": len(bank), "queries": len(queries),
             **per_class(pred, query_y, classes, class_names(test.dataset.source))}
    return {"task": "knn", "metric": "top1", "value": accuracy, "extra": extra}
