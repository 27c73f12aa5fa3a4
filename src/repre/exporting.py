"""Export a checkpoint's backbone as timm safetensors, with a model card, and prove it loads.

    FILE.safetensors   the encoder's weights, timm key names, no head (the card is also in its metadata)
    FILE.json          the model card: arch, kwargs, preprocessing, which encoder, preset, data, evaluation
                       results, versions

The loading contract, checked here before export reports success (strict key match, equal features):

    timm.create_model(card["arch"], pretrained=True, num_classes=0, **card["kwargs"],
                      pretrained_cfg_overlay=dict(file=FILE, **card["pretrained_cfg"]))

`pretrained_cfg`: the input size, normalization and resize-and-crop of the run's evaluation, so that timm's
`resolve_data_config({}, model=model)` gives the model the images it was trained and evaluated on.

Which encoder: each paper's convention (MoCo v3 and MoBY: the online encoder; DINO: the teacher), or
`encoder="encoder"` / `"teacher_encoder"` / `"momentum_encoder"` / `"target_encoder"` to choose.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from repre.config import EVAL_TASKS, Config, flatten, parse_overrides
from repre.core import checkpoint_io as ckpt_io
from repre.core import run_files
from repre.core.atomic import replacing
from repre.core.eval_results import run_results
from repre.core.run_files import read_json, run_dir
from repre.core.schedules import total_steps
from repre.data.evaluation import centre_view, timm_preprocessing
from repre.data.splits import eval_source, spread_readable
from repre.data.views import normalize
from repre.errors import NoTestSplit, UserError
from repre.methods import eval_encoder_key
from repre.models.backbone import TRAINING_ONLY_KWARGS
from repre.pretrained import NOT_TIMMS, encoder_from, held_encoder_key, load_checkpoint_config

log = logging.getLogger("repre")

# images of the run's evaluation data that the card's resize and crop are chosen on and checked with
PREPROCESSING_SAMPLE = 16
TRANSFORM_TOLERANCE = 2.0  # grey levels, on average over an image: PIL's resize against torchvision's


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file; a failed write (a full disk) raises OSError as any file's would, with its errno
    (safetensors raises its own error, with the OS error in its text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(state, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from exc


def sample_images(cfg: Config) -> list[torch.Tensor]:
    """Up to PREPROCESSING_SAMPLE readable images, uint8 [3, H, W], of what the run's evaluation reads (its test
    split, spread over it as a subset is; data without one: its training images); none, said, where they cannot
    be read here."""
    images, why = [], "none readable"
    try:
        try:
            source = eval_source(cfg, "test")
        except NoTestSplit:  # a folder of one's own images: the run's images as evaluation prepares them
            source = eval_source(cfg, "train")
        images = [img for img, _ in spread_readable(source, PREPROCESSING_SAMPLE).values()]
    except (UserError, OSError) as exc:
        why = str(exc).splitlines()[0]
    if not images:
        log.warning("the run's evaluation images cannot be read here (%s): the card's resize and crop follow its "
                    "data's kind (data.name=%s) unchecked; export where its data is for a card chosen on them", why,
                    cfg.data.name)
    return images


def transform_difference(model: torch.nn.Module, images: list[torch.Tensor]) -> float:
    """The largest mean |difference| over an image, in grey levels, between the transform timm builds for
    `model` from its `pretrained_cfg` and repre's evaluation (`centre_view`, normalized), over `images`."""
    import timm.data
    from PIL import Image

    config = timm.data.resolve_data_config({}, model=model)
    transform, size = timm.data.create_transform(**config), config["input_size"][-1]
    std = torch.tensor(config["std"])[:, None, None]
    worst = 0.0
    for img in images:
        theirs = transform(Image.fromarray(img.permute(1, 2, 0).numpy()))
        ours = normalize(centre_view(img, size)[None].float() / 255, config["mean"], config["std"])[0]
        worst = max(worst, float(((theirs - ours).abs() * std).mean() * 255))
    return worst


def task_settings(cfg: Config, task: str, given: Sequence[str] = ()) -> list[str]:
    """The settings of `cfg` (a run's config) that an evaluation of `task` measured with and that differ from the
    defaults (a subset, k, T, the validation split), as config items ("eval.knn.train_subset=1000"), less the
    keys `given` by its `--set` (named beside them); a data path named, not given."""
    section = getattr(cfg.eval, task)
    default = type(section)()
    run_only: set[str] = getattr(type(section), "run_only", set())
    said = [f"eval.{task}.{f.name}={getattr(section, f.name)}" for f in dataclasses.fields(section)
            if f.name not in run_only and getattr(section, f.name) != getattr(default, f.name)]
    set_keys = set(flatten(parse_overrides([str(item) for item in given])))  # `eval.knn={k: 5}` included
    if cfg.eval.split != "test" and "eval.split" not in set_keys:
        said += [f"eval.split={cfg.eval.split}", f"eval.val_size={cfg.eval.val_size}"]
    return [unpathed(item) for item in said if item.split("=", 1)[0] not in set_keys]


def unpathed(item: str) -> str:
    """A config item with a data path named, not given (the training machine's paths)."""
    return re.sub(r"^(data\.root|eval\.segment\.root)=.*", r"\1=(a path)", item)


def run_evaluations(run: Path, step: int, key: str, cfg: Config) -> list[dict[str, Any]]:
    """The results of `run` that describe this checkpoint's encoder: the run's final k-NN (with the settings of
    `cfg`, the run's config, that differ from the defaults) and each `repre eval` result (run/eval/TASK/
    result.json) of the same step and encoder, with the `--set` it was given (a data path named, not given)."""
    evals = []
    done = read_json(run / run_files.SUMMARY)
    if done.get("knn_top1") is not None and done.get("steps") == step and key == eval_encoder_key(cfg.method.name):
        evals.append({"task": "knn", "metric": "top1", "value": done["knn_top1"], "from": "pretrain",
                      "settings": task_settings(cfg, "knn")})
    for r in run_results(run, every=True):
        of = r.get("checkpoint") or {}  # results written before repre recorded it: which checkpoint is unknown
        if isinstance(of, dict) and of.get("step") == step and of.get("encoder") == key:
            given = [str(item) for item in of.get("set", [])]
            on = r.get("extra", {}).get("data") if r["task"] == "segment" else None  # the probe's own images
            settings = task_settings(cfg, r["task"], given) if r["task"] in EVAL_TASKS else []
            evals.append({"task": r["task"], "metric": r.get("metric"), "value": r.get("value"),
                          "from": "repre eval", "set": [unpathed(item) for item in given], "settings": settings,
                          **({"data": on} if on else {})})
    return evals


def recipe(cfg: Config) -> dict[str, Any]:
    """The run's config as its config.yaml holds it, for a reader of the card: how it was trained. Its data
    roots named, not given (the training machine's paths; a URL may hold a token)."""
    out = cfg.to_dict()
    for section in (out["data"], out["eval"]["segment"]):
        if section.get("root"):
            section["root"] = "(a path)"
    return out


def init_record(started: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint's `init_from` as a card shows it: its file's name, not the path on the training machine."""
    return None if started is None else {**started, "checkpoint": Path(started["checkpoint"]).name}


def model_card(ckpt: dict[str, Any], cfg: Config, key: str, arch: str, kwargs: dict[str, Any],
               run: Path | None, weights: dict[str, str], images: list[torch.Tensor]) -> dict:
    """What a user of the file needs to load and judge it; `weights`: the checkpoint's file and SHA-256
    (`weights_of`); `images`: a sample of the run's evaluation images, whose sizes choose the resize and crop."""
    step = int(ckpt.get("step", 0))
    # None: an epoch budget in a checkpoint written before it recorded its images
    total = total_steps(cfg.train, ckpt.get("images") or 0) if cfg.train.max_steps or ckpt.get("images") else None
    evals = run_evaluations(run, step, key, cfg) if run is not None else []
    return {
        "format": "repre-export-3",
        "arch": arch,
        "kwargs": kwargs,
        "model": cfg.model.arch,  # the run's model.arch: timm's `arch` as `kwargs` shape it (vit_pico_patch4)
        "init": cfg.model.init,  # how its position embedding is made, so resampled at another size (export.md)
        "pretrained_cfg": {**timm_preprocessing(cfg.data, [min(img.shape[-2:]) for img in images]), **NOT_TIMMS},
        "encoder": key,
        "checkpoint": weights,
        "method": cfg.method.name,
        "recon": cfg.recon.enabled,
        "preset": cfg.preset,
        "data": {"name": cfg.data.name, "image_size": cfg.data.image_size},
        "config": recipe(cfg),
        "step": step,
        "total_steps": total,  # the run's; a checkpoint before its end (stopped, or a step checkpoint) has fewer
        # the checkpoint the run started from (--init-from; null: none), its steps not counted; named by its file
        # alone, as `checkpoint`; absent for a checkpoint written before repre recorded it
        **({"init_from": init_record(ckpt["init_from"])} if "init_from" in ckpt else {}),
        "evaluations": evals,
        "versions": {"trained_with": ckpt.get("versions", {}), "exported_with": ckpt_io.versions()},
        "load": 'timm.create_model(card["arch"], pretrained=True, num_classes=0, **card["kwargs"], '
                'pretrained_cfg_overlay=dict(file=FILE, **card["pretrained_cfg"]))',
    }


def load_export(file: str | Path, card: dict[str, Any]) -> torch.nn.Module:
    """The documented loading call."""
    import timm

    return timm.create_model(card["arch"], pretrained=True, num_classes=0, **card["kwargs"],
                             pretrained_cfg_overlay=dict(file=str(file), **card.get("pretrained_cfg", {})))


TIMM_NEEDED = (1, 0, 31)  # the loading call: 1.0.30 and older fail it (ViT: custom_load; Swin: headless keys)


def old_timm_hint() -> str:
    """What to do when the installed timm is older than the loading call needs, else ''."""
    import timm

    found = re.match(r"(\d+)\.(\d+)\.(\d+)", timm.__version__)
    if found and tuple(map(int, found.groups())) < TIMM_NEEDED:
        needed = ".".join(map(str, TIMM_NEEDED))
        return f"; timm {timm.__version__} is installed and the export needs >= {needed} (pip install -U timm)"
    return ""


def self_check(file: Path, card: dict[str, Any], state: dict[str, torch.Tensor], reference: torch.nn.Module,
               images: list[torch.Tensor]) -> dict[str, Any]:
    """Load the file the documented way; the keys must match exactly and the features agree; timm's transform
    from the card is compared with repre's evaluation on `images` (the run's). Returns the card's `check`."""
    try:
        with torch.random.fork_rng(devices=[]):  # timm's random init, replaced: the caller's RNG stays as it was
            loaded = load_export(file, card).eval()
    except Exception as exc:  # noqa: BLE001 - any failure of the loading call fails the export
        raise UserError(f"the export does not load with the documented timm call ({type(exc).__name__}: "
                        f"{str(exc)[:300]}){old_timm_hint()}") from None
    keys = set(loaded.state_dict())
    if keys != set(state):
        differ = [f"{what} {_some(names)}" for what, names in (("lacks", keys - set(state)),
                                                                ("has more", set(state) - keys)) if names]
        raise UserError(f"the export's weights do not fit timm's {card['arch']}, so nothing was written: the export "
                        f"{' and '.join(differ)}{old_timm_hint()}")
    size = card["kwargs"].get("img_size", 224)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = reference.eval()(x)
        b = loaded(x)
    diff = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if not diff <= 1e-5:  # NaN features fail too
        raise UserError(f"the loaded export's features differ from the checkpoint's by {diff:.2e} (relative), so "
                        f"nothing was written: the installed timm builds {card['arch']} otherwise than the "
                        f"training did; export with the timm version of the training{old_timm_hint()}")
    return {"strict_keys": True, "max_rel_feature_diff": diff, **transform_check(loaded, card, images)}


def _some(names: set[str]) -> str:
    """"pos_embed, cls_token and 3 more": the first names of a set, for a message."""
    first = sorted(names)[:3]
    return ", ".join(first) + (f" and {len(names) - len(first)} more" if len(names) > len(first) else "")


def transform_check(loaded: torch.nn.Module, card: dict[str, Any], images: list[torch.Tensor]) -> dict[str, Any]:
    """The card's `check` of its preprocessing: timm's transform against repre's evaluation on `images`, said
    when they differ beyond the resizes' rounding (a folder of images both smaller and larger than the input)."""
    if not images:
        return {"transform_images": 0}
    worst = transform_difference(loaded, images)
    if worst > TRANSFORM_TOLERANCE:
        log.warning("timm's transform from the card (crop_pct %s) prepares some of %d of the run's images otherwise "
                    "than repre's evaluation (up to %.1f grey levels on average over an image): their sizes are "
                    "mixed around the input's %d px, so features through timm's transform differ from `repre "
                    "embed`'s for those images; where that matters, use `repre embed` or bring the images to "
                    "one side of either kind (docs/export.md)", card["pretrained_cfg"]["crop_pct"], len(images), worst,
                    card["data"]["image_size"])
    return {"transform_images": len(images), "transform_max_diff_grey_levels": worst}


def weights_of(checkpoint: str | Path) -> dict[str, str]:
    """Which checkpoint an export's weights come from: its file's name (a run's step file, `ckpt_io.named_file`;
    not its folder, which a shared card would give away) and SHA-256."""
    return {"file": ckpt_io.named_file(checkpoint).name, "sha256": ckpt_io.digest(checkpoint)}


def exported_card(path: Path) -> dict[str, Any]:
    """The model card a repre export wrote into FILE.safetensors' metadata; {} for another file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            card = json.loads((fh.metadata() or {}).get("repre_card", "{}"))
    except (OSError, ValueError, SafetensorError):
        return {}
    return card if isinstance(card, dict) else {}


def refuse_replacing(out: Path, weights: dict[str, str], key: str) -> None:
    """Exit 2 when `out` holds other weights (another checkpoint or encoder, or a file repre did not export), or,
    where there is no `out`, a card beside it names others; the same weights are exported again (a card with
    newer results). The weights' own card (in their metadata) decides over the card file beside them, which an
    export stopped between its two renames leaves behind."""
    card_file = out.with_suffix(".json")
    if out.exists():
        named, card = out, exported_card(out)
    elif card_file.exists():
        named, card = card_file, read_json(card_file)
    else:
        return
    was = card.get("checkpoint")
    if isinstance(was, dict) and was.get("sha256") == weights["sha256"] and card.get("encoder") == key:
        return
    what = (f"the {card.get('encoder')} of {was.get('file')} (sha256 {str(was.get('sha256'))[:12]}; these weights: "
            f"{key} of {weights.get('file')}, sha256 {weights['sha256'][:12]})" if isinstance(was, dict)
            else "other weights (no card of a repre export naming its checkpoint)" if named == out
            else "another file (not the card of a repre export)")
    raise UserError(f"{named} exists and holds {what}; give another --out, or --overwrite to replace it")


def export(checkpoint: str | Path, out: str | Path, encoder: str | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    """Write FILE.safetensors and FILE.json from a checkpoint (file or run directory); returns the card with
    the self-check's result under "check". Files of other weights at `out` are refused unless `overwrite`."""

    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out} must end in .safetensors (the model card goes beside it as .json)")
    for path in (out, out.with_suffix(".json")):
        if path.is_dir():
            raise UserError(f"--out {out}: {path} is a folder; give a file's path, such as "
                            f"{out / 'encoder.safetensors'}" if path == out else f"--out {out}: {path}, where "
                            "the card goes, is a folder; give another --out")
    checkpoint = ckpt_io.pinned(checkpoint)  # a run still training replaces its last.pt: one file read
    ckpt, cfg = load_checkpoint_config(checkpoint)
    key = held_encoder_key(ckpt, cfg, checkpoint, encoder)
    weights = weights_of(checkpoint)
    if not overwrite:
        refuse_replacing(out, weights, key)
    backbone = encoder_from(ckpt, cfg, checkpoint, key)
    state = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    kwargs = {k: v for k, v in backbone.kwargs.items() if k not in TRAINING_ONLY_KWARGS}
    in_run = run_files.in_checkpoints(checkpoint)  # a file now (`pinned`): a step file of a run, or another
    images = sample_images(cfg)
    card = model_card(ckpt, cfg, key, backbone.arch, kwargs, run_dir(checkpoint) if in_run else None, weights, images)
    if card["total_steps"] and card["step"] < card["total_steps"]:
        log.warning("exporting step %d of the run's %d (a stopped run, or a step checkpoint): the encoder as it was "
                    "there", card["step"], card["total_steps"])
    with replacing(out.with_suffix(".json")) as card_tmp, replacing(out) as tmp:  # the weights, then the card
        save_weights(state, tmp, {"repre_card": json.dumps(card)})
        card["check"] = self_check(tmp, card, state, backbone.model, images)  # no file written when it fails
        card_tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.chmod(card_tmp.stat().st_mode & 0o777)  # safetensors writes its file 0600; the card's mode (umask's)
    return card
