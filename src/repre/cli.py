"""The `repre` command: a thin layer over `repre.config`, `repre.pretraining`, `repre.eval`, `repre.exporting`
and `repre.use`.

Exit status: 0 success; 1 internal error; 2 user error (the message says what to do); 3 stopped early
but resumable (`"completed": false` in summary.json).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from repre._version import __version__
from repre.config import EVAL_TASKS, Config, reads
from repre.core import run_files
from repre.core.atomic import check_writable, written_file
from repre.core.launch import launch_rank, launched, launched_world_size
from repre.errors import StoppedEarly, UserError

log = logging.getLogger("repre")

EPILOG = """examples:
  repre pretrain                                   # Fashion-MNIST, MoCo v3 + RePre: 2 CPU cores, ~6 min (bf16), ~17 (fp32)
  repre pretrain --config fmnist-mocov3 --out runs/base
  repre pretrain --set train.max_steps=20 --set 'recon.taps=[1,3,5]' --out runs/try   # a short try
  repre config --config fmnist-dino --set train.max_steps=400 > dino.yaml   # the resolved config, to edit
  repre eval knn --checkpoint runs/fmnist-mocov3-repre
  repre compare runs/base runs/fmnist-mocov3-repre   # what each run reports, and the config keys that differ
  repre show --checkpoint runs/fmnist-mocov3-repre --compare runs/base --out show.png
  torchrun --nproc-per-node 8 -m repre eval linear --checkpoint RUN --set eval.linear.protocol=dino
  repre embed --checkpoint runs/fmnist-mocov3-repre --out emb.npy  # + emb.csv (index) and emb.json (card)
  repre neighbors --checkpoint runs/fmnist-mocov3-repre --embeddings emb.npy --out nn.png
"""

EVAL_EPILOG = """what each task reads, and the keys that make it quicker (docs/evaluation.md):
  knn       all training images (the bank) and all test images: eval.knn.train_subset, eval.knn.test_subset
  linear    features of the training and test images, a sweep of lr x weight decay: eval.linear.train_subset,
            eval.linear.test_subset, eval.linear.epochs
  finetune  eval.finetune.steps of fine-tuning (200): eval.finetune.steps, eval.finetune.train_subset,
            eval.finetune.test_subset
  segment   the dense probe's scenes: eval.segment.train, eval.segment.test, eval.segment.epochs
  recon     eval.recon.subset held-out images (1,000)
e.g. a k-NN in under a minute on 2 CPU cores:
  repre eval knn --checkpoint RUN --set eval.knn.train_subset=5000 --set eval.knn.test_subset=1000
"""

PICTURE_OUT = (  # --out of show, neighbors and map
    "the picture: FILE.png, or FILE.svg or FILE.pdf (text as text, for a paper; matplotlib: "
    "pip install 'repre[figures]')")


def _set_option(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--set KEY=VALUE`, repeatable, into `overrides`."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (its last.pt)")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train an encoder from a preset or YAML config")
    p.add_argument("--config", help="preset name (see `repre presets`) or YAML file; default fmnist-mocov3-repre")
    p.add_argument("--out", help="run directory (default runs/<preset>)")
    _set_option(p, "override a config key; repeatable; values parse as YAML (recon.taps=[2,5,8,11])")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --out (starts fresh, saying so, if none)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from another run's weights (checkpoint or run directory): continued pre-training")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", epilog=EVAL_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=EVAL_TASKS)
    _checkpoint_option(p)
    p.add_argument("--out", help="output folder (default <run>/eval/<task>, for an earlier checkpoint or other "
                   "settings a folder under it)")
    own = "; ".join(f"{task} also {reads.listed(keys)}" for task, keys in reads.EVAL_TASK.items())
    _set_option(p, f"override a key of the checkpoint's config: {reads.listed(reads.EVAL)}; {own}")


def _add_presets(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("presets", help="list the presets")


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved config (YAML) that pretrain would run, its keys and "
                       "values validated (the model, e.g. model.arch, is checked when pretrain builds it)")
    p.add_argument("--config", help="preset name or YAML file, as pretrain takes it; default fmnist-mocov3-repre")
    _set_option(p, "override a config key, as pretrain takes it")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="runs side by side: what each reports, and the config keys that differ")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (a checkpoint stands for its run); the others' numbers are read "
                   "against the first's")
    p.add_argument("--seeds", action="store_true",
                   help="one column for the runs that differ in train.seed alone (and run-only keys): each number "
                   "their mean ± standard deviation, its difference to the first column's paired by seed")
    p.add_argument("--format", choices=("text", "markdown", "latex"), default="text",  # use.tables.RENDERERS
                   help="the table as aligned text (default; long texts cut), a Markdown table or a LaTeX tabular "
                   "(booktabs), whole; the JSON line follows each")


def _add_map(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map", help="a 2-D map (t-SNE or UMAP) of an embedding file, by label or as thumbnails")
    p.add_argument("--embeddings", required=True, help="FILE.npy written by `repre embed` (its .csv and .json beside)")
    p.add_argument("--out", required=True, help=PICTURE_OUT)
    p.add_argument("--checkpoint", help="the run whose data the thumbnails are read from (default: the one embed "
                   "read, from the card)")
    p.add_argument("--thumbnails", action="store_true",
                   help="the images at their places, also where every image has a label (default: by label)")
    p.add_argument("--method", default="tsne", choices=("tsne", "umap"),
                   help="tsne (scikit-learn: pip install 'repre[map]') or umap (pip install 'repre[umap]')")
    p.add_argument("--max-points", type=int, default=5000,
                   help="above this, a random subset drawn with --seed (default 5000: t-SNE takes about a minute)")
    p.add_argument("--seed", type=int, default=0)
    _set_option(p, f"override {reads.listed(reads.IMAGES)} for the thumbnails' images (embed's own are read from its "
                "card)")


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="pictures of the learned features: attention, patch PCA, reconstruction")
    _checkpoint_option(p)
    p.add_argument("--compare", help="a second checkpoint or run (e.g. the baseline), drawn beside the first")
    p.add_argument("--out", required=True, help=PICTURE_OUT)
    p.add_argument("--images", type=int, default=4,
                   help="test images shown (default 4, at most 64; data.subset's rule picks them)")
    p.add_argument("--block", type=int, default=-1,
                   help="the block (a Swin: the stage) whose attention and patch features are drawn, 0-based "
                   "(default -1: the last; the RePre decoder reads several, recon.taps)")
    p.add_argument("--image-index", metavar="I,I,...",
                   help="the test images shown, by index (e.g. an `index` of `repre embed --split test`), instead of "
                   "--images")
    _set_option(p, f"override a key of the first checkpoint's config: {reads.listed(reads.SHOW)} (data.* picks the "
                "images)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the backbone as timm safetensors with a model card")
    _checkpoint_option(p)
    p.add_argument("--out", required=True, help="FILE.safetensors (the model card goes to FILE.json)")
    p.add_argument("--encoder", help="which encoder: encoder (online), teacher_encoder (DINO's default), "
                   "momentum_encoder, target_encoder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace FILE.* of other weights (an export of the same checkpoint and encoder is replaced "
                   "without it)")


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write the embedding of every image (L2-normalized, pooled) with an index")
    _checkpoint_option(p)
    p.add_argument("--out", required=True,
                   help="FILE.npy (float32 [N, D]); the index goes to FILE.csv, the card and progress to FILE.json")
    _set_option(p, f"override a key of the checkpoint's config: {reads.listed(reads.EMBED)}; e.g. data.name=folder "
                "data.root=DIR for other images")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="the run's training images (default; data.subset applies) or its test split (a folder's "
                   "val/, or test/)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace FILE.* of another checkpoint or data (the same command continues its own files)")


def _add_neighbors(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("neighbors", help="draw query images and their nearest images in an embedding file")
    p.add_argument("--checkpoint", help="the checkpoint whose data the images are read from (default: the one "
                   "embed read, from the card)")
    p.add_argument("--embeddings", required=True, help="FILE.npy written by `repre embed` (with its .csv and .json)")
    p.add_argument("--out", required=True, help=PICTURE_OUT)
    _set_option(p, f"override {reads.listed(reads.IMAGES)} (after the overrides embed was given, which apply by "
                "default)")
    p.add_argument("--queries", type=int, help="queries drawn at random (default 8, or every row of a smaller "
                   "file)")
    p.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--query-index", metavar="ROW,ROW,...",
                   help="the queries: rows of FILE.npy (the index's `row`), instead of drawing them")
    p.add_argument("--query-embeddings", metavar="FILE.npy",
                   help="draw the queries from this file of the same checkpoint (e.g. embed --split test), their "
                   "neighbours from --embeddings; --query-index then names its rows")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn queries (default 0)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="repre", description="Reconstructive pre-training (RePre) of vision transformers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"repre {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:  # the table at the end of this module, in the order `repre --help` lists them
        COMMANDS[name][0](sub)
    p.commands = sub.choices  # each command's parser, for its own errors (`_parse`)
    return p


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; an option the command does not have, given after it, is that command's error (its
    usage, the nearest option), not the top-level parser's."""
    parser, argv = _parser(), list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        after = args.command in argv and argv.index(unknown[0]) > argv.index(args.command)
        command = parser.commands[args.command] if after else parser
        options = sorted(set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", command.format_usage())))
        near = difflib.get_close_matches(unknown[0].split("=")[0], options, n=1)
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {near[0]}?" if near else ""))
    return args


def cmd_pretrain(args: argparse.Namespace) -> int:
    from repre.config import DEFAULT_PRESET, check_global_batch, load_config, source_dict

    out = Path(args.out) if args.out else Path("runs") / str(source_dict(args.config).get("preset", DEFAULT_PRESET))
    args.resolved_out = str(out)  # named by an error of the filesystem (a full disk)
    source = args.config
    if source is None and args.resume and (out / run_files.CONFIG).is_file():
        source = str(out / run_files.CONFIG)  # resume with the run's own config
    cfg = load_config(source, args.overrides)  # a wrong key or value fails here, before torch is imported
    if launched() and launch_rank() == 0:
        # under torchrun, before torch is imported: rank 0 alone, which says it, so that it fails first (torchrun
        # then stops the others; one failing first could have rank 0 stopped before it spoke)
        check_global_batch("train.batch_size", cfg.train.batch_size, launched_world_size())
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

        go_on = (f"`repre pretrain --out {out} --resume` goes on from the run's newest checkpoint"
                 if step_checkpoints(out) else "no checkpoint was written yet: run the same command again")
        _say(f"repre: interrupted; {go_on}")
        return 3
    if launch_rank() == 0:
        print(json.dumps(summary), flush=True)
    return 0


LENGTH_KEYS = ("max_steps", "epochs")  # train.*: how long a run is, which its schedules follow


def _refuse_another_length(out: Path, cfg: Config, config: str, overrides: list[str]) -> None:
    """`--resume` with `--config`: a run length other than the run's, unless `--set` gives it. A requeued command
    that lost its `--set train.max_steps=N` would go on as a run of the preset's length, its schedules rebuilt
    (the Python API and an explicit `--set` only warn: `Checkpoints`)."""
    import yaml

    from repre.config import flatten, migrate, parse_overrides

    try:
        saved = migrate(yaml.safe_load((out / run_files.CONFIG).read_text())).get("train") or {}
    except (OSError, yaml.YAMLError, AttributeError):
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
    from repre.core.run_files import eval_dir
    from repre.eval import evaluate, keep_result, result_folder

    # named by an error of the filesystem (a full disk), from here on
    args.resolved_out = str(Path(args.out) if args.out else eval_dir(args.checkpoint, args.task, args.overrides))
    out = result_folder(args.checkpoint, args.task, args.overrides, args.out,
                        "--out" if args.out else "the result's folder")
    result = evaluate(args.task, args.checkpoint, args.overrides, out)
    if launch_rank() != 0:  # under torchrun rank 0 alone writes and prints the result
        return 0
    details = {k: v for k, v in result["extra"].items() if isinstance(v, (int, float, str)) or v is None}
    print(f"{'task':<10}{'metric':<10}{'value':<10}details (the JSON line below has all)")
    print(f"{result['task']:<10}{result['metric']:<10}{result['value']:<10.4f}{json.dumps(details)}")
    per_class = _per_class(result["extra"])
    if per_class:
        print(per_class)
    print(json.dumps(result), flush=True)  # before the files: a folder that fails now still has it printed
    keep_result(result, args.checkpoint, out)
    return 0


def _per_class(extra: dict) -> str:
    """A result's value per class on one line ("" for none, or more than 20 classes): k-NN's and the quick
    linear probe's top-1, the dense probe's IoU."""
    if isinstance(extra.get("per_class_top1"), dict):
        name, values = "top-1", extra["per_class_top1"]
    elif isinstance(extra.get("per_class_iou"), dict):
        name, values = "IoU", extra["per_class_iou"]
    else:
        return ""
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
    print(f"wrote {result['out']}: {result['images']} images, columns {', '.join(result['columns'])}")
    print(json.dumps(result), flush=True)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from repre.use.embed import embed

    summary = embed(args.checkpoint, args.out, overrides=args.overrides, split=args.split, overwrite=args.overwrite)
    rate = f", {summary['images_per_sec']} images/s" if summary["images_per_sec"] else " (already complete)"
    print(f"embedded {summary['images']} images of {summary['source_images']} ({summary['skipped']} unreadable, "
          f"left out) as {summary['dim']}-d rows of {summary['embeddings']}; index {summary['index']}{rate}")
    print(json.dumps(summary), flush=True)
    return 0


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

    result = neighbors(args.checkpoint, args.embeddings, args.out, overrides=args.overrides, queries=args.queries,
                       k=args.k, query_rows=_rows(args.query_index), seed=args.seed,
                       query_embeddings=args.query_embeddings)

    def named(item: dict) -> str:
        return f" {item['class']}" if item.get("class") else ""

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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (plays well with redirection). On a terminal
    a record first clears the line, so that it does not land after a progress bar's text (the bar draws itself
    again below it); data workers log through it too."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\r\x1b[K" + text if sys.stderr.isatty() else text


def _setup_logging() -> None:
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        rank = launch_rank()
        handler.setFormatter(logging.Formatter(f"repre[rank {rank}]: %(message)s" if rank else "repre: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING if rank else logging.INFO)  # other ranks: their own warnings only
        log.propagate = False


FILE_OUTPUTS = ("export", "show", "embed", "neighbors", "map")  # the commands whose --out is a file
# a file or folder that cannot be written where the user pointed (exit 2, not a crash): no permission, a read-only
# filesystem, a file where a folder should be or the reverse, a full disk or quota
PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOSPC,
               errno.EDQUOT)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    _setup_logging()
    args = _parse(argv)
    if args.command is None:  # the commands and examples, rather than starting a default run unasked
        _parser().print_help()
        return 0
    try:
        if args.command in FILE_OUTPUTS:  # before the work that the file would hold
            check_writable(Path(args.out).absolute().parent, "--out")
        return COMMANDS[args.command][1](args)
    except UserError as exc:
        _say(f"repre: error: {user_message(exc)}")
        _tell_launcher(exc)
        return 2
    except KeyboardInterrupt:
        go_on = {"embed": "; the same command (without --overwrite) goes on from the rows written",
                 "eval": "; no partial result is kept, the same command starts again (the linear probe's papers' "
                         "protocols go on from their last saved epoch)"}.get(args.command, "")
        _say(f"repre: interrupted{go_on}")
        return 3
    except BrokenPipeError:  # `repre ... | head -1`: the reader left; say nothing more (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1
    except MemoryError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError; host OOM is MemoryError
        _say(out_of_memory_message(exc))
        return 2
    except RuntimeError as exc:
        if launched() and lost_a_process(exc):
            _say(lost_process_message(exc))
            return 1
        if "out of memory" not in str(exc).lower():
            raise
        _say(out_of_memory_message(exc))
        return 2
    except OSError as exc:
        message = path_error_message(exc, getattr(args, "resolved_out", None) or getattr(args, "out", None))
        if message is None:
            raise
        _say(message)
        _tell_launcher(UserError(message.removeprefix("repre: error: ")))
        return 2


def _tell_launcher(exc: BaseException) -> None:
    """Under torchrun, every process writes its error (the message, no traceback) to the launcher's error file
    (torchelastic's JSON layout): the launcher's failure summary shows it for the process that failed first,
    whichever rank it was."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    message = f"repre: error: {user_message(exc)}"
    record = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(record))
    except OSError:
        pass  # best effort: the exit status still tells the launcher


def _say(message: str) -> None:
    """An error for people, on stderr; under torchrun rank 0 says it once for all processes."""
    if launch_rank() == 0:
        print(message, file=sys.stderr)


def path_error_message(exc: OSError, out: str | None) -> str | None:
    """The message of a file or folder that cannot be written where the user pointed (no permission, a file
    where a folder belongs, a full disk), naming it: the target of a rename over it (not the hidden temporary
    file), or the command's --out where the error names none (a write to a full disk). None: another error."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    named = exc.filename2 or exc.filename
    path = written_file(str(named)) if named else (out or "the output") if full else None
    if exc.errno == errno.ENOENT and named and out and made_for(str(named), out):  # a folder that takes no file
        return (f"repre: error: cannot write {path}: no file can be made there (a folder such as /proc takes none); "
                "give another --out")
    if exc.errno not in PATH_ERRORS or path is None:
        return None
    hint = ("free space there, or give another --out" if full else
            "give another path (one this user may read or write, a folder where a folder belongs)")
    return f"repre: error: cannot {'write' if full else 'use'} {path}: {exc.strerror or os.strerror(exc.errno)}; {hint}"


def made_for(named: str, out: str) -> bool:
    """Whether `named` is a file or folder being made for `--out`: `out` itself, or the temporary file that
    stands for it (not a missing input beside it)."""
    return Path(written_file(named)).absolute() == Path(out).absolute()


def user_message(exc: UserError) -> str:
    """The error's message. One raised in a data loader's worker comes back as a UserError whose text is the
    worker's whole traceback, which ends with the message."""
    text = str(exc)
    return text.rsplit("UserError: ", 1)[-1].strip() if "Original Traceback" in text else text


# what a collective raises in the processes left when another process of the run has stopped: gloo's socket
# errors, NCCL's aborted communicator (not a collective's timeout, which a hang of all raises too)
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted",
             "remote process exited")


def lost_a_process(exc: RuntimeError) -> bool:
    """Whether `exc` is a collective's error in a process whose peer stopped (its own error said elsewhere)."""
    return any(text in str(exc) for text in LOST_PEER)


def _first_line(exc: BaseException, width: int) -> str:
    """An error's first line, at most `width` characters (a CUDA or gloo message runs on for lines)."""
    return str(exc).strip().splitlines()[0][:width] if str(exc).strip() else type(exc).__name__


def lost_process_message(exc: RuntimeError) -> str:
    first = _first_line(exc, 160)
    return ("repre: error: another process of this run stopped, and this one lost it in a collective "
            f"({first}): the stopped process's own error is in torchrun's summary below (its \"Root Cause\"); "
            "the checkpoints written stand: mend the cause and run the same command with --resume")


def out_of_memory_message(exc: BaseException) -> str:
    first = _first_line(exc, 200)
    return (f"repre: error: out of memory ({first}). Set model.grad_checkpointing=true or run more processes "
            "(both allowed with --resume: train.batch_size is the global batch), or lower eval.batch_size for "
            "evaluations; or start a new --out with --init-from the last checkpoint and a lower "
            "train.batch_size (the lr scales with it) or train.precision=bf16")


# each command: what adds its parser, what runs it; in the order `repre --help` lists them
COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "pretrain": (_add_pretrain, cmd_pretrain), "eval": (_add_eval, cmd_eval), "presets": (_add_presets, cmd_presets),
    "config": (_add_config, cmd_config), "compare": (_add_compare, cmd_compare), "map": (_add_map, cmd_map),
    "show": (_add_show, cmd_show), "export": (_add_export, cmd_export), "embed": (_add_embed, cmd_embed),
    "neighbors": (_add_neighbors, cmd_neighbors),
}


if __name__ == "__main__":
    sys.exit(main())
