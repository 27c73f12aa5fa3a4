"""`repre embed`: the embedding of every image of a dataset, by the encoder that k-NN and export use.

Each image goes through the evaluation transform (resize, centre crop, no augmentation) and the evaluated
encoder (MoCo v3 and MoBY: the online one; DINO: the teacher); its pooled feature, L2-normalized, is one row
of FILE.npy (`repre.use.store` describes the files). The features are those of k-NN
(`repre.eval.features.pooled_embeddings`), one batch of eval.batch_size at a time.

An unreadable image is logged with its path, counted (`skipped`) and left out: it has no row, so every row
is an image's embedding and FILE.csv says which source index each row is.

The same command run again continues a stopped run from its last batch; a finished one is reported again
without recomputing. Files of another checkpoint, encoder, data, split or precision are refused unless
`overwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repre.config import Config, DataConfig, override_items, parse_overrides, reads
from repre.core import checkpoint_io as ckpt_io
from repre.core import launch, run_files
from repre.core.progress import progress_bar
from repre.core.run_lock import RunLock
from repre.core.runtime import Runtime, seeded, setup_runtime
from repre.data.evaluation import indexed_loader
from repre.data.folder import warn_unreadable
from repre.data.labels import class_names
from repre.data.sources import TRAIN_DIRS, ImageSource, build_source, image_path, pretraining_stats
from repre.data.splits import train_source
from repre.errors import NoTestSplit, UserError
from repre.eval.features import check_finite, pooled_embeddings
from repre.methods import eval_encoder_key
from repre.models.backbone import Backbone
from repre.pretrained import encoder_from, load_checkpoint_config, refuse_unread
from repre.use.store import FORMAT, EmbeddingFiles, EmbeddingWriter, index_lines_of, read_card

log = logging.getLogger("repre")

SPLITS = ("train", "test")


def embed_source(cfg: Config, split: str, command: str = "embed") -> ImageSource:
    """The images embed reads (and `show` draws): the run's training images (data.subset included) or the data's
    test split (whatever the run's eval.split)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose train or test")
    if cfg.data.streamed:
        raise UserError(f"{command} reads images by index, which streamed shards ({cfg.data.root}) cannot give: "
                        "--set data.shard_access=random with local shards, or data.name=folder")
    if split == "train":
        return train_source(cfg)
    try:
        return build_source(cfg.data, "test", seed=cfg.train.seed)
    except NoTestSplit as exc:
        root, kind = Path(exc.root), "shards" if cfg.data.name == "shards" else "folder"
        if not root.is_dir():
            what, put = "is a shard or a pattern, without a held-out split", "give --set data.root a folder with " \
                "train/ and val/ shards"
        elif root.name.lower() in TRAIN_DIRS:  # beside its held-out split
            what, put = "is a training split itself", f"point data.root at {root.parent}, which holds its val/"
        else:
            what, put = f"has no val/ (or test/) {kind}", f"put held-out images in {root}/val/"
        raise UserError(f"--split test: {root} {what}, so no test images to read: {command} its training images "
                        f"(--split train), or {put}") from None


def drop_run_subset(cfg: Config, overrides: list[str]) -> None:
    """The run's data.subset picks among its own training images: for other images (`--set data.name`, `root`
    or `source`) without a data.subset of their own, all of them."""
    given = parse_overrides(overrides).get("data", {})
    if cfg.data.subset and "subset" not in given and given.keys() & {"name", "root", "source"}:
        log.info("data.subset=%d is the run's subset of its training images: all the images given are read",
                 cfg.data.subset)
        cfg.data.subset = None


def identity(checkpoint: str | Path, cfg: Config, split: str, rt: Runtime, images: int, dim: int) -> dict:
    """What makes the rows what they are: a rerun continues only files of the same identity (as JSON has it,
    to compare with a card's)."""
    m = cfg.model
    return json.loads(json.dumps({
        "checkpoint_sha256": ckpt_io.digest(checkpoint), "encoder": eval_encoder_key(cfg.method.name),
        "model": {"arch": m.arch, "kwargs": m.kwargs, "init": m.init},  # model.kwargs may change the features
        "data": row_data(dataclasses.asdict(cfg.data)), "split": split, "images": images, "dim": dim,
        # generated images are drawn from the seed
        **({"data_seed": cfg.train.seed} if cfg.data.name == "synthetic" else {}),
        "precision": str(rt.dtype).removeprefix("torch.") if rt.amp else "float32"}))


def row_data(data: dict[str, Any]) -> dict[str, Any]:
    """A data config without the keys that cannot change a row (a rerun given one continues its files, and one
    differing only there is not said to differ in data): those of pre-training alone (DINO's local crops, where
    its stages run) and, where the images are not generated, those of generated images."""
    generated = data.get("name") == "synthetic"
    return {k: v for k, v in data.items() if reads.reads_key(f"data.{k}", reads.EMBED)
            and (generated or not k.startswith("synthetic_"))}


def upgraded(old: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """An earlier card's identity in today's terms: the normalization its rows had where it recorded none
    (cards written before the data's mean and std were always set: the statistics of its data's kind); the
    model settings and the generated images' seed where it did not record them (taken as this run's); the
    keys of generated images left out where they are not (`row_data`)."""
    data = old.get("data")
    if isinstance(data, dict):
        data = row_data(data)
        old = {**old, "data": data}
    if isinstance(data, dict) and data.get("mean") is None and data.get("std") is None:
        mean, std = pretraining_stats(DataConfig(name=data.get("name", "fashion-mnist")))
        old = {**old, "data": {**data, "mean": list(mean), "std": list(std)}}
    if "model" not in old:
        old = {**old, **{k: now[k] for k in ("model", "data_seed") if k in now}}
    return old


def made_from(card: dict[str, Any]) -> Path | None:
    """The run's step file of the card's step, where it is still there (a run prunes its older ones)."""
    if not card.get("checkpoint") or not isinstance(card.get("step"), int):
        return None
    step_file = Path(card["checkpoint"]).parent / f"{run_files.step_name(card['step'])}.pt"
    return step_file if run_files.in_checkpoints(step_file) and step_file.is_file() else None


def open_writer(files: EmbeddingFiles, card: dict[str, Any], overwrite: bool) -> EmbeddingWriter:
    """New files, or those of an earlier run of the same identity continued; others exit 2 unless `overwrite`."""
    if overwrite or not files.existing():
        return EmbeddingWriter.create(files, card, card["identity"]["images"], card["identity"]["dim"])
    old = read_card(files.card)
    now = card["identity"]
    then = upgraded(old["identity"], now) if old else {}
    if then != now:
        named = {"checkpoint_sha256": "checkpoint", "images": "number of images", "dim": "width",
                 "model": "model settings", "data_seed": "seed (train.seed, which draws generated images)"}
        differ = [named.get(k, k) for k in sorted(now.keys() | then.keys()) if then.get(k) != now.get(k)]
        if old:
            said = (f"{files.npy} exists: it and its .csv / .json were made with another {', '.join(differ)} (their "
                    f"card: {files.card.name})")
            step_file = made_from(old)
            if "checkpoint" in differ and step_file is not None:  # a run that trained on: its step file goes on
                said += f"; to go on with the weights they were made from, give --checkpoint {step_file}"
        else:
            there = " and ".join(p.name for p in files.existing())
            kind = ("is no embedding card (another file of that name)" if files.card.exists()
                    else "is missing")
            verb = "exists" if len(files.existing()) == 1 else "exist"
            said = f"{there} {verb} beside --out, and {files.card.name} {kind}"
        raise UserError(f"{said}; give another --out, or --overwrite to replace them")
    assert old is not None  # without a card, `then` is {}, unlike `now`: refused above
    if not old["progress"]["complete"]:
        log.info("continuing %s from image %d (%d rows written)", files.npy, old["progress"]["next_index"],
                 old["progress"]["rows"])
    return EmbeddingWriter.reopen(files, {**old, **{k: v for k, v in card.items() if k != "progress"}})


def write_rows(encoder: Backbone, cfg: Config, source: ImageSource, rt: Runtime, writer: EmbeddingWriter) -> int:
    """Embed the source's images from the writer's `next_index` to the end; returns the images read."""
    start = writer.progress["next_index"]
    bar = progress_bar(total=len(source), initial=start, unit="img", desc="embed", disable=not cfg.train.progress)
    try:
        for feats, batch in pooled_embeddings(encoder, indexed_loader(cfg, source, start), rt):
            for index, why in batch.unreadable:
                warn_unreadable(why, f"skipped unreadable image {index} (left out of the embeddings)")
            if feats is not None:  # the rows written so far stay; other weights' go to a new file
                check_finite(feats, "embed an earlier one, with --overwrite or into another --out",
                             f" of the batch from image {int(batch.indices[0])}")
            indices = batch.indices.tolist()
            writer.append(feats, indices, [image_path(source, i) for i in indices], batch.labels.tolist(),
                          len(batch.unreadable), batch.end)
            bar.update(batch.end - bar.n)
    finally:
        bar.close()
    return len(source) - start


def embed(checkpoint: str | Path, out: str | Path, *, overrides: Sequence[str] | None = None,
          split: str = "train", overwrite: bool = False) -> dict[str, Any]:
    """Write the L2-normalized pooled embedding of every readable image of the checkpoint's data (its config
    plus `overrides`; `split` train or test) to `out` (FILE.npy, with FILE.csv and FILE.json beside it).
    Returns the summary {"command": "embed", "embeddings", "index", "card", "images", "dim", "skipped", ...}."""
    files = EmbeddingFiles.of(out)
    if launch.launched():
        raise UserError("embed runs in one process (it writes one file in order): run it without torchrun")
    refuse_unread("repre embed", override_items(overrides), reads.EMBED)
    if split == "test" and parse_overrides(overrides or []).get("data", {}).get("subset") is not None:
        raise UserError("--set data.subset picks training images: --split test embeds the whole test split; drop "
                        "data.subset, or embed the training split")
    given, checkpoint = checkpoint, ckpt_io.pinned(checkpoint)  # the weights read and their checksum: one file's
    ckpt, cfg = load_checkpoint_config(checkpoint, overrides)
    drop_run_subset(cfg, override_items(overrides))
    source = embed_source(cfg, split)
    rt = setup_runtime(cfg.train)
    with seeded(cfg.train.seed, rt):
        encoder = encoder_from(ckpt, cfg, checkpoint).to(rt.device)
    card = {"format": FORMAT, "identity": identity(checkpoint, cfg, split, rt, len(source), encoder.embed_dim),
            "classes": class_names(source),  # label i's name (null: none known)
            # the file the images' data config is read from later (neighbors, map): the run's last.pt stays
            "checkpoint": str(ckpt_io.checkpoint_file(given).resolve()), "step": int(ckpt.get("step", 0)),
            "overrides": override_items(overrides), "versions": ckpt_io.versions()}
    lock = lock_out(files)  # once the checkpoint and the data are known good: no folder made for a refusal
    try:
        writer = open_writer(files, card, overwrite)
        resumed_from = writer.progress["next_index"]
        if resumed_from:
            check_unchanged(files, source)
        started = time.perf_counter()
        read = write_rows(encoder, cfg, source, rt, writer)
        seconds = time.perf_counter() - started
        progress = writer.finish()["progress"]
    finally:
        lock.unlock()
    if not progress["rows"]:  # as evaluation refuses features of no image
        raise UserError(f"none of the {len(source):,} images could be read (each is named in a warning above): "
                        f"{files.npy} holds no row; mend or replace the files, then run with --overwrite")
    return {"command": "embed", "completed": True, "embeddings": str(files.npy), "index": str(files.csv),
            "card": str(files.card),
            "images": progress["rows"], "dim": encoder.embed_dim, "skipped": progress["skipped"],
            "source_images": len(source), "split": split, "resumed_from": resumed_from,
            "images_per_sec": round(read / seconds, 1) if read else None, "device": rt.device.type}


def check_unchanged(files: EmbeddingFiles, source: ImageSource) -> None:
    """The rows already written are still of the images the source names at their indices: a folder whose files
    were renamed since (the same count) would be continued, or called complete, with rows of images gone."""
    for row, index, path, _ in index_lines_of(files.csv):
        if path and (now := image_path(source, index)) != path:
            raise UserError(f"{files.csv} row {row} is {path}, but image {index} of the data is now {now}: the "
                            f"images changed since {files.npy} was embedded; --overwrite to embed them again")


def lock_out(files: EmbeddingFiles) -> RunLock:
    """The lock of `files`, held while they are written: a second `repre embed` of the same --out (a rerun while
    the first still runs) would continue from the same row and write the index twice over."""
    try:
        files.npy.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # the writer says what is wrong with the folder
    lock = RunLock(files.npy.parent, f".{files.npy.name}.lock", f"{files.npy} is being written", remove=True)
    why = lock.acquire()
    if why:
        raise UserError(why)
    return lock
