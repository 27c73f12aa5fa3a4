"""The command line: each command's options and help, and the parse that names the nearest option of a typo.
Imports no torch, so `repre --help` stays fast; the choices the library checks are spelled here too (a test
holds them equal)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable

from repre._version import __version__
from repre.config import EVAL_TASKS, all_keys, reads

# options as other tools name them -> ours (a preset or YAML file is given with --config)
OTHER_NAMES = {"--preset": "--config", "--cfg": "--config", "--output": "--out", "--output-dir": "--out"}

EPILOG = """examples:
  repre pretrain                      # Fashion-MNIST, MoCo v3 + RePre: 2 CPU cores, ~4 min (bf16), ~17 (fp32)
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


def seed(text: str) -> int:
    """A --seed: an integer from 0 to 2**32 - 1, what numpy and scikit-learn take."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is no seed: give an integer from 0 to {2**32 - 1}")
    return value


def _set_option(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--set KEY=VALUE`, repeatable, into `overrides`."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _checkpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (its last.pt)")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train an encoder from a preset or YAML config")
    p.add_argument("--config", help="preset name (see `repre presets`) or YAML file; default fmnist-mocov3-repre")
    p.add_argument("--out", help="run directory (default runs/<preset>)")
    _set_option(p, "override a config key; repeatable; values parse as YAML (recon.taps=[1,3,5])")
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
    common = [k for k in all_keys() if k.startswith("eval.") and k.count(".") == 1]  # eval.split, ...
    shared = reads.listed(reads.EVAL).replace("eval.*", f"{', '.join(common)}, the task's eval.TASK.* (not "
                                                        "eval.knn.enabled)")
    _set_option(p, f"override a key of the checkpoint's config: {shared}; {own}")


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
    p.add_argument("--seed", type=seed, default=0, help="seed of the subset and the layout (default 0)")
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
    p.add_argument("--seed", type=seed, help="seed of the drawn queries (default 0; not with --query-index)")


# each command's options, in the order `repre --help` lists them (`commands.RUN` runs them)
ADD: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "pretrain": _add_pretrain, "eval": _add_eval, "presets": _add_presets, "config": _add_config,
    "compare": _add_compare, "map": _add_map, "show": _add_show, "export": _add_export, "embed": _add_embed,
    "neighbors": _add_neighbors,
}


class Parser(argparse.ArgumentParser):
    """The `repre` parser, which keeps each command's own (`commands`) for that command's errors (`parse`)."""

    commands: dict[str, argparse.ArgumentParser]


def build() -> Parser:
    p = Parser(
        prog="repre", description="Reconstructive pre-training (RePre) of vision transformers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"repre {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    for add in ADD.values():
        add(sub)
    p.commands = sub.choices  # each command's parser, for its own errors (`parse`)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; an option the command does not have, given after it, is that command's error (its
    usage, the nearest option), not the top-level parser's."""
    parser, argv = build(), list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0].split("=")[0] not in ("-h", "--help", "--version"):
        named = next((a for a in argv if a in parser.commands), "COMMAND")  # `repre --set k=v config`
        parser.error(f"{argv[0]} goes after the command: repre {named} {argv[0]} ...")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        after = args.command in argv and argv.index(unknown[0]) > argv.index(args.command)
        command = parser.commands[args.command] if after else parser
        options = sorted(set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", command.format_usage())))
        flag = unknown[0].split("=")[0]
        near = ([OTHER_NAMES[flag]] if OTHER_NAMES.get(flag) in options  # spelt as other tools spell it
                else difflib.get_close_matches(flag, options, n=1, cutoff=0.7))  # not --set for --out
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {near[0]}?" if near else ""))
    return args
