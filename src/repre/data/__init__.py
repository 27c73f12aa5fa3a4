"""Datasets (Fashion-MNIST, image folders, synthetic) and the two-view augmentation pipeline."""

from repre.data.loader import build_source, eval_loader, pretrain_loader, train_source, view_spec

__all__ = ["build_source", "eval_loader", "pretrain_loader", "train_source", "view_spec"]
