"""Configs of older repres in today's keys: `migrate` reads a resolved config (a run's config.yaml, a
checkpoint's) as it was trained; `renamed_message` tells a person who writes an old key what it is now."""

from __future__ import annotations

import copy
import logging
from typing import Any

from repre.config.schema import EVAL_TASKS, MethodConfig
from repre.errors import UserError

# the repre whose keys `migrate` leads to: a config written by it or a later one (its `repre_version`) is read
# as written; an older one, or one written before configs named their repre, is migrated. A version of repre
# that changes keys adds its steps to `migrate` and raises this to itself
KEYS_VERSION = "0.2.0"

# keys renamed when each section's keys were given one meaning (CHANGELOG.md, 0.2.0): old -> new
RENAMED = {
    **{f"eval.{old}": f"eval.{new}" for old, new in {
        "knn_k": "knn.k", "knn_temperature": "knn.temperature", "knn_train_subset": "knn.train_subset",
        "knn_test_subset": "knn.test_subset", "quick_knn_train": "knn.quick_train",
        "quick_knn_test": "knn.quick_test", "recon_images": "recon.images", "recon_subset": "recon.subset",
    }.items()},
    **{f"eval.{task}_{key}": f"eval.{task}.{key}" for task, keys in {
        "linear": ("features", "blocks", "lrs", "wds", "epochs", "val_fraction", "train_subset", "test_subset"),
        "finetune": ("steps", "batch_size", "lr", "layer_decay", "weight_decay", "label_smoothing",
                     "warmup_fraction", "crop_scale", "train_subset", "test_subset"),
        "segment": ("data", "root", "size", "classes", "ignore", "train", "test", "lr", "epochs"),
    }.items() for key in keys},
}
# where each stage of the views' pipeline ran, three keys until data.device_stages said it in one value
PLACEMENT_KEYS = ("data.decode_on", "aug.geometric_on", "aug.photometric_on")
SCENE_SIZE = 64  # the canvas of the dense probe's scenes (repre.data.scenes.SIZE)
# keys removed in 0.2.0 (options no preset used, measured and left; docs/results.md) -> (the one value the code
# has now, what became of the option)
REMOVED = {
    "recon.loss": ("l1", "the reconstruction loss is L1; L2, one seed, fell below the baseline in linear and dense"),
    "recon.target": ("view", "the branch reconstructs the view; the clean crop was no better on 3 seeds"),
    "recon.norm_pix_floor": (1e-6, "norm_pix floors a patch's variance at MAE's 1e-6; 0.01 was no better on 3 seeds"),
    "recon.min_width": (8, "the decoder's x2 steps halve its width down to 8"),
    "recon.depth": (1, "the decoder has no blocks after its fusion; 3 blocks scored lower in k-NN and linear"),
    "recon.weight_end": (None, "lambda (recon.weight) is constant; schedules scored lower in k-NN and linear"),
}
# removed keys that also compute what the code does now at the value of another key of their section: a
# schedule of lambda from recon.weight to the same value is the constant lambda
SAME_AS_NOW = {"recon.weight_end": "weight"}
# what a config written before eval.linear.protocol holds for keys that are null now (the protocol's value)
QUICK_DEFAULTS = {"features": "cls", "blocks": 1, "epochs": 30}
# recon.* defaults a config written without the key was trained with: the branch at its plainest, before the
# presets' measured choices became the defaults. Not recon.norm_pix: every config repre wrote holds it. A recon
# section repre wrote before out_stride existed holds the keys it had then and has not now (FORMER_RECON_KEYS);
# one without them is a person's file shaped like a run's (a preset's copy), which takes today's defaults
FORMER_RECON_DEFAULTS = {"out_stride": 1}
FORMER_RECON_KEYS = ("loss", "min_width", "depth")
# method keys that were shared by the frameworks: old -> {framework: its key now}
RENAMED_METHOD = {
    "temperature": {"mocov3": "temperature", "moby": "temperature", "dino": "student_temp"},
    "proj_dim": {"mocov3": "proj_dim", "moby": "proj_dim", "dino": "bottleneck_dim"},
    "mlp_dim": {"mocov3": "mlp_dim", "moby": "mlp_dim", "dino": "hidden_dim"},
    "freeze_patch_embed": {"mocov3": "freeze_patch_embed"},
    "queue_size": {"moby": "queue_size"},
    **{key: {"dino": key} for key in ("out_dim", "norm_last_layer", "teacher_temp", "warmup_teacher_temp",
                                      "warmup_teacher_temp_fraction", "center_momentum",
                                      "freeze_last_layer_fraction")},
}


def renamed_message(key: str) -> str | None:
    """What to write instead of a key of an older repre (None: not an old key)."""
    section, _, name = key.partition(".")
    if section == "method" and name in RENAMED_METHOD:
        new = " / ".join(f"method.{m}.{k}" for m, k in RENAMED_METHOD[name].items())
        return f"config key {key!r} was renamed in repre 0.2.0: each framework has its own now ({new})"
    if key in RENAMED:
        return f"config key {key!r} was renamed to {RENAMED[key]!r} in repre 0.2.0"
    if key == "eval.knn":
        return "eval.knn is a section since repre 0.2.0: write eval.knn.enabled=true/false"
    if key in ("data.scenes_train", "data.scenes_test", "data.scene_size"):
        return (f"config key {key!r} was removed in repre 0.2.0 with pre-training on fashion-scenes; the dense "
                "probe's scenes are 64 px unless eval.segment.size says otherwise")
    if key in REMOVED:
        return f"config key {key!r} was removed in repre 0.2.0: {REMOVED[key][1]}"
    if key == "train.warmup_steps":
        return "train.warmup_steps was removed in repre 0.2.0: set train.warmup_fraction (a fraction of the run)"
    if key in PLACEMENT_KEYS:
        return (f"config key {key!r} was replaced in repre 0.2.0 by data.device_stages, which says in one value "
                "which stages run on the device: photometric (aug.photometric_on=device), crops "
                "(aug.geometric_on=device), decode (data.decode_on=device), workers (none) or auto")
    return None


def migrate(raw: dict[str, Any], refuse_removed: bool = True) -> dict[str, Any]:
    """A resolved config written by an older repre (a checkpoint's, a run's config.yaml) in today's keys, each
    change of 0.2.0 in turn. Files people write get `renamed_message` instead. A removed key (REMOVED) holding
    the value the code has now goes; another value is refused (the run computed what this repre cannot), or
    with `refuse_removed=False` (a run only described, as by `repre compare`) kept."""
    raw = copy.deepcopy(raw)
    recon = raw.get("recon")
    written_recon = isinstance(recon, dict) and any(k in recon for k in FORMER_RECON_KEYS)  # before they go
    _removed_keys(raw, refuse_removed)
    method, evals, train = raw.get("method") or {}, raw.get("eval") or {}, raw.get("train") or {}
    _warmup_as_fraction(train)
    _one_placement_key(raw)
    _method_keys_to_their_framework(method)
    _eval_keys_to_their_task(evals)
    _pretraining_on_scenes(raw, refuse_removed)
    _quick_probe_values(evals)
    _null_subsets(evals)
    _local_crops_probabilities(raw)
    if written_recon:
        _former_recon_defaults(raw)
    return raw


def _removed_keys(raw: dict[str, Any], refuse: bool) -> None:
    """Each REMOVED key at the value the code has now (or SAME_AS_NOW's) -> gone; at another value -> an
    error, or kept."""
    for key, (now, why) in REMOVED.items():
        section_name, name = key.split(".")
        section = raw.get(section_name)
        if not isinstance(section, dict) or name not in section:
            continue
        other = SAME_AS_NOW.get(key)
        if section[name] == now or (other in section and section[name] == section[other]):
            del section[name]
        elif refuse:
            raise UserError(f"this run was configured with {key}={section[name]!r}, which repre 0.2.0 removed "
                            f"({why}): read it with the repre its summary.json names (versions.repre, versions.git)")


def _pretraining_on_scenes(raw: dict[str, Any], refuse: bool) -> None:
    """Pre-training on fashion-scenes (data.name, removed in 0.2.0) is refused (or kept); its keys go:
    data.scenes_train and scenes_test, and data.scene_size, whose value the dense probe's eval.segment.size=0
    read (now the scenes' 64 px)."""
    data, evals = raw.get("data"), raw.get("eval")
    if not isinstance(data, dict):
        return
    if data.get("name") == "fashion-scenes" and refuse:
        raise UserError("this run pre-trained on fashion-scenes (data.name), which repre 0.2.0 removed (its gain "
                        "did not hold on the test split): read it with the repre its summary.json names "
                        "(versions.repre, versions.git); the dense probe still reads the scenes (eval.segment.data)")
    for key in ("scenes_train", "scenes_test"):
        data.pop(key, None)
    size = data.pop("scene_size", SCENE_SIZE)
    segment = evals.get("segment") if isinstance(evals, dict) else None
    if size != SCENE_SIZE and isinstance(segment, dict) and not segment.get("size"):
        segment["size"] = size


def _warmup_as_fraction(train: dict[str, Any]) -> None:
    """train.warmup_steps (removed) -> the train.warmup_fraction of max_steps that gives the same steps."""
    warmup_steps = train.pop("warmup_steps", 0)
    if warmup_steps and train.get("max_steps"):  # the same steps: round(fraction * max_steps) gives them back
        train["warmup_fraction"] = min(warmup_steps / train["max_steps"], 1.0)
    elif warmup_steps:  # an epoch budget: the steps a run has depend on its data, unknown here
        logging.getLogger("repre").warning(
            "this config's warm-up of %d steps (train.warmup_steps, removed in repre 0.2.0) is read as its "
            "train.warmup_fraction, %s, which a resumed run trains with", warmup_steps, train.get("warmup_fraction"))


def _one_placement_key(raw: dict[str, Any]) -> None:
    """data.decode_on, aug.geometric_on and aug.photometric_on -> data.device_stages: the latest stage of the
    pipeline they put on the device (decode, else crops, else photometric; photometric_on=auto: auto). A config
    that has data.device_stages already keeps it."""
    data, aug = raw.get("data"), raw.get("aug")
    data, aug = data if isinstance(data, dict) else {}, aug if isinstance(aug, dict) else {}
    old = {"decode": data.pop("decode_on", None), "crops": aug.pop("geometric_on", None),
           "photometric": aug.pop("photometric_on", None)}
    if any(old.values()) and "device_stages" not in data and isinstance(raw.get("data"), dict):
        latest = next((stage for stage, where in old.items() if where == "device"), None)
        data["device_stages"] = latest or ("workers" if old["photometric"] == "workers" else "auto")


def _method_keys_to_their_framework(method: dict[str, Any]) -> None:
    """The method keys the frameworks shared -> the section of the framework that ran (RENAMED_METHOD)."""
    name = method.get("name", MethodConfig.name)
    for old, targets in RENAMED_METHOD.items():
        if old in method:
            value = method.pop(old)
            if name in targets:
                method.setdefault(name, {})[targets[name]] = value


def _eval_keys_to_their_task(evals: dict[str, Any]) -> None:
    """eval.knn as a bool -> eval.knn.enabled; the flat eval.TASK_KEY keys -> eval.TASK.KEY (RENAMED)."""
    if isinstance(evals.get("knn"), bool):
        evals["knn"] = {"enabled": evals["knn"]}
    for old, new in RENAMED.items():
        key = old.split(".", 1)[1]
        if key in evals:
            task, field_name = new.split(".")[1:]
            evals.setdefault(task, {})[field_name] = evals.pop(key)


def _quick_probe_values(evals: dict[str, Any]) -> None:
    """A linear section written when the quick probe was the only one: its values that are each protocol's own
    now (null) where they were the quick probe's defaults."""
    linear = evals.get("linear")
    if isinstance(linear, dict) and "protocol" not in linear:
        for key, default in QUICK_DEFAULTS.items():
            if linear.get(key) == default:
                linear[key] = None


def _null_subsets(evals: dict[str, Any]) -> None:
    """A subset of 0, which 0.1.0 read as "all images" -> null, which says so now."""
    for task in EVAL_TASKS:
        section = evals.get(task)
        if not isinstance(section, dict):
            continue
        for key in section:
            if key.endswith("subset") and section[key] == 0:
                section[key] = None


def _local_crops_probabilities(raw: dict[str, Any]) -> None:
    """DINO's local crops with two blur or solarization probabilities, which gave them the second global view's
    (today refused) -> that value written out as the third: the run's views as they were."""
    data, aug = raw.get("data") or {}, raw.get("aug") or {}
    for key in ("blur_prob", "solarize_prob"):
        values = aug.get(key)
        if data.get("local_crops") and isinstance(values, list) and len(values) == 2:
            aug[key] = [*values, values[1]]
            logging.getLogger("repre").warning(
                "aug.%s=%s of a run with DINO's local crops reads as %s, the value its local crops took (a new run "
                "from this config: set DINO's third value, 0.5 for blur, 0 for solarization)", key, values, aug[key])


def _former_recon_defaults(raw: dict[str, Any]) -> None:
    """A recon section repre wrote before a key of FORMER_RECON_DEFAULTS existed: that key at the default the
    run was trained with, not today's."""
    recon = raw.get("recon")
    if isinstance(recon, dict):
        for key, value in FORMER_RECON_DEFAULTS.items():
            recon.setdefault(key, value)
