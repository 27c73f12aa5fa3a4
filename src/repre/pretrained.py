"""A pre-trained checkpoint as the commands after pre-training take it (`repre eval`, `export`, `embed`,
`neighbors`, `map`, `show`): its config with `--set` overrides (its data's normalization kept), its encoder
(the one export writes: the online one, DINO's teacher) or its whole model, and the refusal of `--set` keys a
command does not read (which it reads: `repre.config.reads`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repre.builder import build_encoder, build_model
from repre.config import (
    Config,
    DataConfig,
    config_from_dict,
    deep_update,
    flatten,
    migrate,
    override_items,
    parse_overrides,
    reads,
)
from repre.config.reads import listed, reads_key
from repre.core import checkpoint_io as ckpt_io
from repre.core import launch
from repre.data.evaluation import timm_preprocessing
from repre.data.sources import check_data_code, pretraining_stats
from repre.errors import UserError
from repre.methods import eval_encoder_key
from repre.models.backbone import Backbone, fit_backbones
from repre.reconstruction import ENCODER_WEIGHTS, METHOD, PretrainingModel, encoder_prefix

log = logging.getLogger("repre")

# the provenance that the timm architecture's own pretrained_cfg would otherwise lend a run's encoder (its hub
# weights, their licence, ImageNet's 1,000 classes): none of it describes these weights
NOT_TIMMS = {"url": None, "hf_hub_id": None, "tag": None, "license": None, "num_classes": 0}


def load_checkpoint_config(checkpoint: str | Path, overrides: Sequence[str] | None = None,
                           weights: bool = True) -> tuple[dict, Config]:
    """A checkpoint and its config with `overrides` applied. Whatever data `overrides` point at, the images are
    normalized as the encoder pre-trained (`data.mean` and `data.std` set to its statistics), unless they set
    `data.mean` and `data.std` themselves: another dataset's statistics would shift every feature. `weights`
    False: for the config alone (`ckpt_io.load`'s)."""
    ckpt = ckpt_io.load(checkpoint, weights)
    raw = migrate(ckpt["config"])  # in today's keys (a checkpoint of an older repre), before the overrides
    cfg = _config_of(raw, overrides or [])
    if cfg.data.source == raw.get("data", {}).get("source") and launch.launch_rank() == 0:  # the run's data
        check_data_code(cfg.data, ckpt.get("data_code"), checkpoint)
    return ckpt, cfg


def _config_of(raw: dict, overrides: Sequence[str]) -> Config:
    """A checkpoint's config `raw` (in today's keys) with `overrides` applied, its data normalized by the
    pre-training's statistics unless they set `data.mean` or `data.std`."""
    raw = copy.deepcopy(raw)
    given = parse_overrides(list(overrides))
    if not {"mean", "std"} & set(given.get("data", {})):
        data = raw.get("data", {})  # its name and statistics alone decide (pretraining_stats)
        mean, std = pretraining_stats(DataConfig(name=data.get("name", "fashion-mnist"), mean=data.get("mean"),
                                                 std=data.get("std")))
        raw.setdefault("data", {}).update(mean=list(mean), std=list(std))
    deep_update(raw, given)
    return config_from_dict(raw, migrated=True)


def changed_settings(checkpoint: str | Path, overrides: Sequence[str]) -> list[str]:
    """The items of `overrides` that give a key another value than the checkpoint's run has: one that repeats
    the run's own setting (`eval.knn.train_subset=2000` on a run with 2000) measures what the run measures, so
    its result is filed, drawn in the run's TensorBoard and compared as the run's own. Overrides that do not
    load are returned whole: the command's own checks say what is wrong with them."""
    items = override_items(overrides)
    if not items:
        return items
    try:
        raw = migrate(ckpt_io.load(checkpoint, weights=False)["config"])
        run, given = (flatten(_config_of(raw, o).to_dict()) for o in ([], items))  # as the evaluation builds them
    except (UserError, KeyError, TypeError, ValueError):
        return items

    def changes(item: str) -> bool:  # a key, a section's keys under it, or the whole value it sits in (kwargs)
        key = item.split("=", 1)[0].strip()
        return any(given[k] != run.get(k) for k in given
                   if k == key or k.startswith(key + ".") or key.startswith(k + "."))

    return [item for item in items if changes(item)]


def _load_into(module: nn.Module, state: dict, checkpoint: str | Path, what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
        problem = f"{len(missing)} missing and {len(unexpected)} unexpected weights" if missing or unexpected else ""
    except RuntimeError as exc:  # shape mismatches
        problem = ckpt_io.size_mismatch(exc)
    if problem or not state:
        raise UserError(
            f"checkpoint {checkpoint} does not match the {what} of the config used to evaluate it "
            f"({problem or 'no weights'}); drop --set overrides of model.*, recon.* or data.image_size, or pick the "
            "right checkpoint"
        )


def encoder_state(ckpt: dict, key: str = "encoder") -> dict[str, torch.Tensor]:
    """An encoder's weights with timm's key names: the online one (`key` "encoder") or, for DINO, the teacher.
    A checkpoint's "model" is a `PretrainingModel`'s state: the method's encoders are `method.KEY`, Backbones
    whose timm model is their `model`."""
    prefix = encoder_prefix(key) + ENCODER_WEIGHTS
    return {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}


def encoder_keys(ckpt: dict) -> list[str]:
    """The encoders a checkpoint holds, by their method's attribute names (a `Backbone`'s weights are
    `method.KEY.model.*`; heads hold none under `model`)."""
    state = ckpt["model"]
    attributes = {k.split(".")[1] for k in state if k.startswith(METHOD)}
    return sorted(a for a in attributes if any(k.startswith(encoder_prefix(a) + ENCODER_WEIGHTS) for k in state))


def held_encoder_key(ckpt: dict, cfg: Config, checkpoint: str | Path, key: str | None = None) -> str:
    """`key` (default: the evaluated encoder, the online one or DINO's teacher), or a UserError naming the
    encoders the checkpoint holds."""
    key = key or eval_encoder_key(cfg.method.name)
    if not encoder_state(ckpt, key):
        keys = encoder_keys(ckpt)
        raise UserError(f"checkpoint {checkpoint} has no {key!r}; it has {', '.join(keys) or 'no encoders'}")
    return key


def encoder_from(ckpt: dict, cfg: Config, checkpoint: str | Path, key: str | None = None) -> Backbone:
    """Encoder `key` of a loaded checkpoint (default: the evaluated one, the online encoder or DINO's teacher)."""
    key = held_encoder_key(ckpt, cfg, checkpoint, key)
    with torch.random.fork_rng(devices=[]):  # its random init is replaced: the caller's RNG stays as it was
        encoder = build_encoder(cfg)
    state = {f"model.{k}": v for k, v in encoder_state(ckpt, key).items()}
    _fit_image_size(encoder, state, ckpt, cfg, checkpoint)
    _load_into(encoder, state, checkpoint, f"encoder {cfg.model.arch}")
    return encoder


def load_encoder(checkpoint: str | Path, overrides: Sequence[str] | None = None,
                 encoder: str | None = None) -> tuple[Backbone, Config]:
    """An encoder of a checkpoint, ready to embed images, and the config with `overrides` (of data.* and
    model.*; others are refused). `encoder`: which (the evaluated one by default: the online encoder, DINO's
    teacher; or encoder, teacher_encoder, momentum_encoder, target_encoder, as `repre export --encoder`).

    It is in eval mode (no stochastic depth), and its timm model's `pretrained_cfg` holds the run's input size,
    normalization and resize-and-crop, so `timm.data.resolve_data_config({}, model=encoder.model)` builds the
    run's evaluation transform; its `crop_pct` follows the data's kind (1 for Fashion-MNIST at an input of at
    least its 28 px, 0.875 for a folder),
    where `repre export` chooses it on the run's own images (a folder of images no larger than the input: 1)."""
    refuse_unread("repre.load_encoder", override_items(overrides), reads.ENCODER)
    ckpt, cfg = load_checkpoint_config(checkpoint, overrides)
    backbone = encoder_from(ckpt, cfg, checkpoint, encoder).eval()
    run = {k: tuple(v) if isinstance(v, list) else v for k, v in timm_preprocessing(cfg.data).items()}  # timm's
    timm_model: Any = backbone.model  # its pretrained_cfg, a dict, is timm's own (no class they share declares it)
    timm_model.pretrained_cfg = {**timm_model.pretrained_cfg, **run, **NOT_TIMMS}
    return backbone, cfg


def model_from(ckpt: dict, cfg: Config, checkpoint: str | Path) -> PretrainingModel:
    """The whole pre-training model of a loaded checkpoint, built from `cfg` (`checkpoint` names it in errors)."""
    head = ckpt["model"].get(f"{METHOD}head.weight")  # supervised checkpoints carry their class count
    with torch.random.fork_rng(devices=[]):  # its random init is replaced: the caller's RNG stays as it was
        model = build_model(cfg, None if head is None else head.shape[0])
    state = dict(ckpt["model"])  # the checkpoint's own stays as it was read
    _fit_image_size(model, state, ckpt, cfg, checkpoint)
    _load_into(model, state, checkpoint, "model")
    return model


def _fit_image_size(module: nn.Module, state: dict[str, torch.Tensor], ckpt: dict, cfg: Config,
                    checkpoint: str | Path) -> None:
    """`state` (`module`'s), trained at another data.image_size than `cfg`'s, made to fit in place: a ViT's
    position embedding resampled to this patch grid (`Backbone.fit_state`), as DINO's evaluations do. A Swin's
    windows must be those it trained with at the new size: else UserError naming a size that keeps them."""
    trained = ckpt.get("config", {}).get("data", {}).get("image_size")
    swin = next((m for m in module.modules() if isinstance(m, Backbone) and m.hierarchical), None)
    if swin is not None and isinstance(trained, int) and trained != cfg.data.image_size:
        size, windows = cfg.data.image_size, swin.windows_at(trained)
        swin.check_windows_at((size, size), windows=windows)
        if swin.windows() != windows:  # trained where timm shrank a window: larger grids widen it again
            raise UserError(f"{checkpoint} was trained at data.image_size={trained}, where timm shrank the Swin's "
                            f"windows to {windows}; at {size} px they would be {swin.windows()}, with other position "
                            f"tables: evaluate it at {trained} px")
    if fit_backbones(module, state):
        log.info("%s: trained at data.image_size=%s, its position embeddings resampled to %d", checkpoint,
                 trained, cfg.data.image_size)


def refuse_unread(command: str, overrides: Sequence[str], reads: tuple[str, ...]) -> None:
    """A UserError naming the `--set` keys that `command` does not read (they would change nothing silently).
    Keys that are no config key at all are left to the config's own error, which names the nearest."""
    known = flatten(Config().to_dict())
    unread = [k for k in flatten(parse_overrides(overrides)) if k in known and not reads_key(k, reads)]
    if unread:
        why = ["it would change nothing"] if any(not k.startswith("method.") for k in unread) else []
        if any(k.startswith("method.") for k in unread):  # would build another model, or measure another encoder
            why.append("method.*: the checkpoint's method builds its model and picks the encoder evaluated "
                       "(`repre export --encoder` writes another one)")
        raise UserError(f"--set {', '.join(unread)}: not read by `{command}` ({'; '.join(why)}); it reads "
                        f"{listed(reads)}: drop the others")
