"""What each `repre` command runs: a thin layer over `repre.config`, `repre.pretraining`, `repre.eval`,
`repre.exporting` and `repre.use`, which it imports when the command runs (no torch for `--help`). Each prints a
line for people and, last, one JSON line for scripts (docs: the CLI contract)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from repre.cli.failures import say
from repre.config import Config
from repre.core import run_files
from repre.core.launch import launch_rank, launched, launched_world_size, said_by_the_first
from repre.errors import StoppedEarly, UserError


def cmd_pretrain(args: argparse.Namespace) -> int:
    from repre.config import DEFAULT_PRESET, check_global_batch, load_config, parse_overrides, source_dict

    # runs/PRESET, the preset a --set preset=NAME names included
    preset = parse_overrides(args.overrides).get("preset") or source_dict(args.config).get("preset", DEFAULT_PRESET)
    out = Path(args.out) if args.out else Path("runs") / str(preset)
    args.resolved_out = str(out)  # named by an error of the filesystem (a full disk)
    source = args.config
    if source is None and args.resume and (out / run_files.CONFIG).is_file():
        source = str(out / run_files.CONFIG)  # resume with the run's own config
    cfg = None
    with said_by_the_first():  # every process reads the config alike: its warnings said once
        if source is None and args.resume:  # a folder of checkpoints/ alone (config.yaml lost): theirs
            cfg = _checkpoint_config(out, args.overrides)
        if cfg is None:
            cfg = load_config(source, args.overrides)  # a wrong key or value fails here, before torch is imported
        _warn_of_idle_keys(cfg, args.config, args.overrides)
    if launched() and launch_rank() == 0:
        # under torchrun, before torch is imported: rank 0 alone, which says it, so that it fails first (torchrun
        # then stops the others; one failing first could have rank 0 stopped before it spoke)
        resuming = args.resume and any((out / run_files.CHECKPOINTS).glob("*.pt"))  # its batch fixed
        check_global_batch("train.batch_size", cfg.train.batch_size, launched_world_size(), resuming=resuming)
    if args.resume and args.config is not None:
        _refuse_another_length(out, cfg, args.config, args.overrides)
    from repre.pretraining import pretrain

    try:
        summary = pretrain(cfg, out, resume=args.resume, init_from=args.init_from)
    except StoppedEarly as stop:
        if launch_rank() == 0:
            print(str(stop), flush=True)
        return 3
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now; the newest one stands
        from repre.core.checkpoint_io import step_checkpoints
        from repre.core.run_files import folder_kind

        if step_checkpoints(out):
            go_on = f"`repre pretrain --out {out} --resume` goes on from the run's newest checkpoint"
        elif folder_kind(out) == "run":  # its first lines logged: the same command alone would be refused
            go_on = f"no checkpoint was written yet: the same command with --resume starts the run again in {out}"
        else:
            go_on = "no checkpoint was written yet: run the same command again"
        say(f"repre: interrupted; {go_on}")
        return 3
    if launch_rank() == 0:
        print(json.dumps(summary), flush=True)
    return 0


def _checkpoint_config(out: Path, overrides: list[str]) -> Config | None:
    """The config that the newest readable checkpoint in `out` holds, with `overrides`; None without one."""
    from repre.config import config_from_dict, deep_update, migrate, parse_overrides
    from repre.core import checkpoint_io as ckpt_io

    last = out / run_files.CHECKPOINTS / run_files.LAST
    for path in [*reversed(ckpt_io.step_checkpoints(out)), *([last] if last.is_file() else [])]:
        try:
            saved = ckpt_io.load(path, weights=False)["config"]
        except (UserError, OSError, KeyError):
            continue  # damaged: the resume itself says so, and takes an earlier one
        if launch_rank() == 0:
            logging.getLogger("repre").warning("%s has no %s: resuming with the config its checkpoint %s holds",
                                               out, run_files.CONFIG, path.name)
        raw = migrate(saved)
        deep_update(raw, parse_overrides(overrides))
        return config_from_dict(raw, migrated=True)
    return None


def _warn_of_idle_keys(cfg: Config, config: str | None, overrides: list[str]) -> None:
    """Keys given for a framework that does not run (`--set method.dino.teacher_temp=...` on a MoCo v3 run), for
    a disabled branch (recon.* with recon.enabled=false), or train.epochs where the preset's train.max_steps sets
    the length, change nothing: said (not refused: one list of settings may serve runs of several frameworks, and
    of RePre and its baseline)."""
    from repre.config import given_keys, idle_sections

    if launch_rank() != 0:
        return
    given = given_keys(config, overrides)
    idle = sorted(k for k in given if k.startswith(idle_sections(cfg.method.name, cfg.recon.enabled)))
    branch = [k for k in idle if k.startswith("recon.")]  # said apart: the branch, not the method, leaves them
    idle = [k for k in idle if k not in branch]
    if "method.momentum" in idle:  # names no framework: the method has no momentum encoder
        idle.remove("method.momentum")
        logging.getLogger("repre").warning("method.momentum: method.name=%s has no momentum or teacher encoder, so "
                                           "it changes nothing", cfg.method.name)
    if idle:
        logging.getLogger("repre").warning(
            "%s: read only with the method each names, and this run trains method.name=%s: %s nothing",
            ", ".join(idle), cfg.method.name, "it changes" if len(idle) == 1 else "they change")
    if branch:
        logging.getLogger("repre").warning(
            "%s: read only with the reconstruction branch, and this run has recon.enabled=false: %s nothing",
            ", ".join(branch), "it changes" if len(branch) == 1 else "they change")
    if "train.epochs" in given and "train.max_steps" not in given and cfg.train.max_steps:  # a preset's steps
        logging.getLogger("repre").warning(
            "train.epochs=%s changes nothing: train.max_steps=%d (the preset's) sets the run's length; give "
            "--set train.max_steps=0 with it to count epochs", cfg.train.epochs, cfg.train.max_steps)


LENGTH_KEYS = ("max_steps", "epochs")  # train.*: how long a run is, which its schedules follow


def _refuse_another_length(out: Path, cfg: Config, config: str, overrides: list[str]) -> None:
    """`--resume` with `--config`: a run length other than the run's, unless `--set` gives it. A requeued command
    that lost its `--set train.max_steps=N` would go on as a run of the preset's length, its schedules rebuilt
    (the Python API and an explicit `--set` only warn: `Checkpoints`)."""
    from repre.config import flatten, parse_overrides, read_written, read_yaml

    try:
        saved = read_written(read_yaml((out / run_files.CONFIG).read_text(), "config.yaml"))[0].get("train") or {}
    except (OSError, UserError, UnicodeDecodeError, AttributeError):
        return  # no run yet, or its config cannot say: the resume itself tells
    given = set(flatten(parse_overrides(overrides)))  # `train.max_steps=N` or `train={max_steps: N}`
    changed = [k for k in LENGTH_KEYS if k in saved and saved[k] != getattr(cfg.train, k)]
    if changed and not given & {f"train.{k}" for k in LENGTH_KEYS}:
        was = ", ".join(f"train.{k}={saved.get(k)}" for k in LENGTH_KEYS)
        now = ", ".join(f"train.{k}={getattr(cfg.train, k)}" for k in LENGTH_KEYS)
        raise UserError(f"--resume into {out}: the run has {was}, and --config {config} gives {now}, so its "
                        f"schedules would follow another length: give --set train.max_steps=N (or train.epochs) to "
                        f"change its length, or the run's own --set as before, or leave out --config to resume with "
                        f"the run's config")


def cmd_eval(args: argparse.Namespace) -> int:
    from repre.core.eval_results import eval_dir
    from repre.eval import evaluate, keep_result, result_folder
    from repre.pretrained import changed_settings

    measured = changed_settings(args.checkpoint, args.overrides)  # the run's own settings repeated: its folder
    # named by an error of the filesystem (a full disk), from here on
    args.resolved_out = str(Path(args.out) if args.out else eval_dir(args.checkpoint, args.task, measured))
    out = result_folder(args.checkpoint, args.task, measured, args.out, "--out" if args.out else "the result's folder")
    result = evaluate(args.task, args.checkpoint, args.overrides, out)
    if launch_rank() != 0:  # under torchrun rank 0 alone writes and prints the result
        return 0
    # the scalars, rounded as a metrics line's; a sentence (the protocol's reference) is for the JSON line
    details = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in result["extra"].items()
               if isinstance(v, (int, float)) or v is None or (isinstance(v, str) and len(v) <= 40)}
    print(f"{'task':<10}{'metric':<10}{'value':<10}details (the JSON line below has all)")
    print(f"{result['task']:<10}{result['metric']:<10}{result['value']:<10.4f}{json.dumps(details)}")
    per_class = _per_class(result["extra"])
    if per_class:
        print(per_class)
    print(json.dumps(result), flush=True)  # before the files: a folder that fails now still has it printed
    keep_result(result, args.checkpoint, out)
    return 0


def _per_class(extra: dict) -> str:
    """A result's value per class on one line ("" for none, or more than 20 classes with a value: the labels a
    dense probe's masks skip count for nothing): k-NN's and the quick linear probe's top-1, the dense probe's
    IoU."""
    if isinstance(extra.get("per_class_top1"), dict):
        name, values = "top-1", extra["per_class_top1"]
    elif isinstance(extra.get("per_class_iou"), dict):
        name, values = "IoU", extra["per_class_iou"]
    else:
        return ""
    if len(values) > 20:
        values = {c: v for c, v in values.items() if v is not None}
    if not values or len(values) > 20:
        return ""
    return f"per class ({name}): " + ", ".join(f"{c} {'-' if v is None else f'{v:.3f}'}" for c, v in values.items())


def cmd_export(args: argparse.Namespace) -> int:
    from repre.exporting import export

    card = export(args.checkpoint, args.out, args.encoder, args.overwrite)
    model = card["arch"] if card["model"] == card["arch"] else f"{card['model']} (timm's {card['arch']}, reshaped)"
    print(f"exported {card['encoder']} of {model} ({card['method']}, step {card['step']}) to {args.out}; "
          f"loads with timm: strict keys, features within {card['check']['max_rel_feature_diff']:.1e}")
    print(json.dumps({"export": str(args.out), "card": str(Path(args.out).with_suffix(".json")), **card}), flush=True)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from repre.use.show import show

    result = show(args.checkpoint, args.out, compare=args.compare, images=args.images, overrides=args.overrides,
                  image_index=_rows(args.image_index, "--image-index", "indices of the test images"),
                  block=args.block)
    print(f"wrote {result['out']}: {result['images']} images, {len(result['columns'])} columns: "
          f"{' | '.join(result['columns'])}")
    print(json.dumps(result), flush=True)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from repre.use.embed import embed

    try:
        summary = embed(args.checkpoint, args.out, overrides=args.overrides, split=args.split,
                        overwrite=args.overwrite)
    except KeyboardInterrupt:  # the last stdout line says how far the files are (the card keeps it)
        _print_embed_progress(args.out)
        raise
    rate = f", {summary['images_per_sec']} images/s" if summary["images_per_sec"] else " (already complete)"
    went_on = summary["resumed_from"] and summary["images_per_sec"]  # a continued file, with work left
    resumed = f"; images from {summary['resumed_from']} embedded now" if went_on else ""
    print(f"{summary['embeddings']} holds {summary['images']} of {summary['source_images']} images as "
          f"{summary['dim']}-d rows ({summary['skipped']} unreadable, left out{resumed}); index "
          f"{summary['index']}{rate}")
    print(json.dumps(summary), flush=True)
    return 0


def _print_embed_progress(out: str) -> None:
    """The JSON line of an interrupted `repre embed`: its files and the rows written so far, as its card has
    them (nothing where it made no card yet)."""
    from repre.use.store import EmbeddingFiles, read_card

    files = EmbeddingFiles.of(out)
    card = read_card(files.card)
    if card is None or card["progress"]["complete"]:  # none yet, or another command's finished files
        return
    progress = card["progress"]
    print(json.dumps({"command": "embed", "completed": False, "embeddings": str(files.npy), "index": str(files.csv),
                      "card": str(files.card), "images": progress["rows"], "skipped": progress["skipped"],
                      "next_index": progress["next_index"]}), flush=True)


def _rows(text: str | None, option: str = "--query-index", what: str = "rows of the embeddings") -> list[int] | None:
    """"3,17,42" -> [3, 17, 42]."""
    if text is None:
        return None
    try:
        rows = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        rows = []
    if not rows:
        raise UserError(f"{option} {text!r}: give {what} as integers, e.g. 3,17,42")
    return rows


def cmd_neighbors(args: argparse.Namespace) -> int:
    from repre.use.neighbors import neighbors

    if args.query_index is not None and args.seed is not None:
        raise UserError("--seed draws the queries, which --query-index names: give one of them")
    result = neighbors(args.checkpoint, args.embeddings, args.out, overrides=args.overrides, queries=args.queries,
                       k=args.k, query_rows=_rows(args.query_index), seed=args.seed or 0,
                       query_embeddings=args.query_embeddings)

    def named(item: dict) -> str:  # its class, else its file's name, else its label (generated images)
        if item.get("class"):
            return f" {item['class']}"
        if item.get("path"):
            return f" {Path(item['path']).name}"
        return f" label {item['label']}" if item.get("label") is not None else ""

    print("each query's row of the embeddings, then its neighbours': row, class, file or label, (cosine "
          "similarity)")
    for q in result["queries"]:
        near = ", ".join(f"{n['row']}{named(n)} ({n['similarity']:.4f})" for n in q["neighbors"])
        print(f"query {q['row']}{named(q)}: {near}")
    if result["same_class"] is not None:
        print(f"neighbours of their query's class: {result['same_class']:.1%}")
    print(f"picture: {result['out']}")
    print(json.dumps(result), flush=True)
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from repre.use.embedding_map import map_file

    result = map_file(args.embeddings, args.out, checkpoint=args.checkpoint, method=args.method,
                      limit=args.max_points, seed=args.seed, overrides=args.overrides, thumbnails=args.thumbnails)
    sampled = f", a random {result['points']} of {result['embeddings']} (seed {result['seed']})" \
        if result["subsampled"] else ""
    print(f"wrote {result['out']}: {result['method']} {result['kind']} of {result['points']} embeddings{sampled}")
    print(json.dumps(result), flush=True)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from repre.use.compare import compare, table

    result = compare(args.runs, args.seeds)
    print(table(result, args.format))
    print(json.dumps(result), flush=True)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from repre.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="", flush=True)
    return 0


def cmd_presets(_: argparse.Namespace) -> int:
    from repre.config import list_presets

    for name, description in list_presets().items():
        print(f"{name}\t{description}")
    return 0


# each command's runner (`parser.ADD` holds its options)
RUN: dict[str, Callable[[argparse.Namespace], int]] = {
    "pretrain": cmd_pretrain, "eval": cmd_eval, "presets": cmd_presets, "config": cmd_config,
    "compare": cmd_compare, "map": cmd_map, "show": cmd_show, "export": cmd_export, "embed": cmd_embed,
    "neighbors": cmd_neighbors,
}
