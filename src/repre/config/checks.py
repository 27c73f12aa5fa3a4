"""Typed construction and validation: a mapping -> the dataclasses of `schema`, every key checked and every
value coerced to its field's type (`build_section`), then each section's ranges and rules and those that span
sections (`validate`). Errors name the nearest valid key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from repre.config.migrate import renamed_message
from repre.config.schema import (
    MAX_STEPS,
    MULTI_CROP,
    AugConfig,
    Config,
    DataConfig,
    LinearConfig,
    ReconConfig,
    TrainConfig,
)
from repre.errors import UserError


def glued_fix(text: Any) -> str:
    """"YAML needs a space after a key's colon: depth: 8" for `depth:8`, which YAML reads as one string (a key
    without a value, or a value where a mapping belongs); "" for anything else."""
    if not (isinstance(text, str) and re.fullmatch(r"\s*[\w.]+:[^\s:/].*", text)):  # not a URL's `://`
        return ""
    return f"YAML needs a space after a key's colon: {text.strip().replace(':', ': ', 1)}"


def _glued(text: Any) -> str:
    return f" ({glued_fix(text)})" if glued_fix(text) else ""


def build_section(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Construct dataclass `cls` (a section, or the whole `Config`) from `raw`, checking every key and value
    type; its sub-sections in turn."""
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "config"
        raise UserError(renamed_message(where) or f"{where} must be a mapping, got {raw!r}{_glued(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            if isinstance(key, str) and "." in key and key in all_keys(Config):  # `train.lr: 0.1` in a file
                head, _, rest = key.partition(".")
                raise UserError(f"{key!r} is a dotted key: in a YAML file, nest it ({head}: then {rest}: indented "
                                "below it); dotted keys are --set's")
            old = renamed_message(prefix + str(key))
            if old is None and value is None and glued_fix(key):  # `{max_steps:5}`: a key without a value
                raise UserError(f"{prefix}{key} is a key without a value{_glued(key)}")
            raise UserError(old or _unknown_key_message(_first_leaf(prefix + str(key), value),
                                                        [prefix + n for n in names]))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config, for suggestions and documentation."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _first_leaf(key: str, value: Any) -> str:
    """The dotted key of the first value under `key` (`trian` holding {max_steps: 2}: `trian.max_steps`): a
    misspelt section is matched by the whole key, as it was given."""
    while isinstance(value, dict) and value:
        name, value = next(iter(value.items()))
        key = f"{key}.{name}"
    return key


def _unknown_key_message(key: str, siblings: list[str]) -> str:
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5) or _same_last_part(key)
    if not near:
        near = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
    said = " or ".join([", ".join(map(repr, near[:-1])), repr(near[-1])] if near[:-1] else [repr(near[-1])])
    return f"unknown config key {key!r}; did you mean {said}? (valid here: {', '.join(siblings)})"


def _same_last_part(key: str) -> list[str]:
    """The keys whose last part is (or is nearest) the last part of `key`, at most three: `lr` given without
    its section matches train.lr before a section's name."""
    leaves: dict[str, list[str]] = {}
    for k in all_keys():
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.8)
    return leaves[leaf[0]][:3] if leaf else []


def _type_name(tp: Any) -> str:
    """A type as a person reads it: "int", "one of cls, avg" for a Literal, "int or null" for an Optional (whose
    typing name is "Optional")."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if t is type(None) else _type_name(t) for t in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if type(value).__module__ in ("numpy", "torch") and hasattr(value, "tolist"):  # an array set from Python
        value = value.tolist()
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_section(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        if value == "None" and type(None) in options:  # Python's spelling: YAML reads it as text
            raise UserError(f"{key}=None is the text 'None' in YAML: write null for no value"
                            + (", ./None for a folder of that name" if str in options else ""))
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError:
                if isinstance(value, (list, tuple)) and typing.get_origin(option) is list:
                    raise  # a list of the wrong items: its own message names the item
                continue
        raise UserError(f"{key} must be {_type_name(tp)}, got {value!r}{_quote_hint(key, value, options)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if type(value) not in {type(c) for c in choices} or value not in choices:  # true is not 1
            raise UserError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r} (write [a, b] with --set)")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a mapping, got {value!r}{_glued(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and "_" not in value:  # 1_000: refused as an int key refuses it
        try:  # PyYAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, os.PathLike):  # a Path set from Python (data.root = Path(...))
        return os.fspath(value)
    raise UserError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
                    f"{_quote_hint(key, value, (tp,))}")


def _quote_hint(key: str, value: Any, options: tuple[Any, ...]) -> str:
    """For a text key given what YAML read as a number, a truth value or a mapping (a folder named 2024, `on`,
    a `pipe: cmd` with a space): how to pass the text."""
    if list in {typing.get_origin(t) for t in options} and isinstance(value, str) and "," in value:
        return " (write a list as [a, b] with --set)"
    if str not in options or isinstance(value, (str, list)):
        return ""
    if value is None:
        return f"; YAML read it as null (an empty value, null or ~): give the text (--set '{key}=\"...\"')"
    kind = "true or false" if isinstance(value, bool) else "a mapping" if isinstance(value, dict) else "a number"
    return f"; YAML read it as {kind}: for the text, quote it (--set '{key}=\"...\"')"


RULES: dict[str, tuple[Callable[[float], bool], str]] = {  # a field's valid values -> (test, as said in errors)
    ">0": (lambda v: v > 0, "> 0"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=1": (lambda v: v >= 1, ">= 1"),
    ">=2": (lambda v: v >= 2, "at least 2"),
    ">=-1": (lambda v: v >= -1, ">= -1"),
    "[0,1]": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "(0,1]": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "(0,1)": (lambda v: 0 < v < 1, "in (0, 1)"),
    "[0,0.5]": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    "steps": (lambda v: 0 <= v <= MAX_STEPS, f"in [0, {MAX_STEPS:,}]"),
    # the seeds derived from it (`repre.core.rng`) must fit torch's 64-bit seeds; numpy's and Lightning's range
    "seed": (lambda v: 0 <= v <= 2**32 - 1, f"in [0, {2**32 - 1:,}] (2**32 - 1)"),
}


def check_ranges(section: str, values: Any) -> None:
    """Every field of a section named in its `ranges` holds a valid value (each item of a list; None passes)."""
    for key, rule in values.ranges.items():
        value = getattr(values, key)
        test, text = RULES[rule]
        items = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not value:
            raise UserError(f"{section}.{key} is an empty list: give one or more values {text}")
        if not all(math.isfinite(v) and test(v) for v in items):  # inf passed every lower bound
            raise UserError(f"{section}.{key} must be {text}{' and finite' if text[0] in '>' else ''}, got {value}")


def sections(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every section of a config, nested ones included: [("data", DataConfig(...)), ("method.dino", ...), ...]."""
    out = []
    for f in dataclasses.fields(values):
        child = getattr(values, f.name)
        if dataclasses.is_dataclass(child):
            out += [(prefix + f.name, child), *sections(child, f"{prefix}{f.name}.")]
    return out


def validate(cfg: Config) -> None:
    """Every section's value ranges and own rules, then the rules that span sections."""
    for name, values in sections(cfg):
        _SECTION_RULES.get(name, lambda _: None)(values)
        check_ranges(name, values)
    _validate_across(cfg)


def check_global_batch(key: str, batch: int, processes: int, resuming: bool = False) -> None:
    """`key`=`batch` is a global batch: each of `processes` processes takes an equal share of it. The CLI checks
    this with torchrun's WORLD_SIZE before torch is imported (every process would otherwise import it, join
    the group and build the run first); the trainer and the probe check it again with the group's size.
    `resuming`: a run's batch cannot change on --resume, so the advice is a process count that divides it."""
    if batch % processes:
        fits = ", ".join(str(n) for n in range(1, batch + 1) if batch % n == 0)
        do = (f"a resumed run keeps its batch: launch a number of processes that divides it ({fits})" if resuming
              else f"use a multiple of {processes}")
        raise UserError(f"{key}={batch} (the global batch) is not divisible by the {processes} processes; {do}")


def _validate_data(d: DataConfig) -> None:
    if d.name == "python" and not re.fullmatch(r"[\w.]+:[\w.]+", d.source or ""):
        raise UserError(f"data.name=python reads the dataset of your own code that data.source names as "
                        f"module:function (e.g. --set data.source=mydata:images); got {d.source!r}")
    if d.name != "python" and d.source is not None:
        raise UserError(f"data.source={d.source} is read with data.name=python only (data.name={d.name}): drop it "
                        "(--set data.source=null), or set data.name=python")
    if (d.mean is None) != (d.std is None):
        raise UserError("set both data.mean and data.std, or neither")
    if d.mean is not None and d.std is not None and (len(d.mean) != 3 or len(d.std) != 3):
        raise UserError("data.mean and data.std need 3 values each (RGB), std > 0")


def _low_high(section: str, values: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        low_high = getattr(values, key)
        if len(low_high) != 2 or low_high[0] > low_high[1]:
            raise UserError(f"{section}.{key} must be two numbers [low, high], got {low_high}")


def _validate_aug(a: AugConfig) -> None:
    _low_high("aug", a, ("crop_scale", "local_crop_scale", "crop_ratio", "blur_sigma"))
    for key in ("blur_prob", "solarize_prob"):  # per view: first global, second global[, local crops]
        if len(getattr(a, key)) not in (2, 3):
            raise UserError(f"aug.{key} must have 2 or 3 numbers (global 1, global 2[, local]), "
                            f"got {getattr(a, key)}")


def _validate_recon(r: ReconConfig) -> None:
    if isinstance(r.taps, int) and r.taps <= 0:
        raise UserError(f"recon.taps must be > 0 (a count) or a list of block indices, got {r.taps}")
    if isinstance(r.taps, list) and not r.taps:
        raise UserError("recon.taps=[] names no block: give a count (4) or block indices ([2, 5, 8, 11])")
    if r.out_stride & (r.out_stride - 1):
        raise UserError(f"recon.out_stride must be a power of two (1, 2, 4, ...), got {r.out_stride}")


def _validate_train(t: TrainConfig) -> None:
    if t.max_steps <= 0 and t.epochs <= 0:
        raise UserError("set train.epochs > 0 or train.max_steps > 0")


def _validate_linear(lin: LinearConfig) -> None:
    if lin.protocol == "quick" and lin.lr is not None:
        raise UserError(f"eval.linear.lr={lin.lr} is the base lr of the mocov3, dino and moby protocols; the quick "
                        "protocol tries each of eval.linear.lrs: set those, or eval.linear.protocol=mocov3, dino or "
                        "moby")


def _validate_kwargs(cfg: Config) -> None:
    """model.kwargs that would contradict what repre gives timm from its own keys (a crash at the first batch,
    or a drop path other than model.drop_path's, silently)."""
    kw, size = cfg.model.kwargs, cfg.data.image_size
    if "img_size" in kw and kw["img_size"] not in (size, [size, size], (size, size)):
        raise UserError(f"model.kwargs.img_size={kw['img_size']}: repre sets it from data.image_size; drop it from "
                        "model.kwargs")
    if kw.get("drop_path_rate", cfg.model.drop_path) != cfg.model.drop_path:
        raise UserError(f"model.kwargs.drop_path_rate={kw['drop_path_rate']}: repre sets it from model.drop_path; "
                        "drop it from model.kwargs")
    if "num_classes" in kw:
        raise UserError(f"model.kwargs.num_classes={kw['num_classes']}: the encoder is built without a head "
                        "(num_classes=0); drop it from model.kwargs")


_SECTION_RULES: dict[str, Callable[[Any], None]] = {
    "data": _validate_data, "aug": _validate_aug, "recon": _validate_recon, "train": _validate_train,
    "eval.linear": _validate_linear, "eval.finetune": lambda f: _low_high("eval.finetune", f, ("crop_scale",))}


def _validate_across(cfg: Config) -> None:
    """The rules that relate keys of several sections."""
    d, t = cfg.data, cfg.train
    _validate_kwargs(cfg)
    if d.local_crops and cfg.method.name not in MULTI_CROP:
        raise UserError(f"data.local_crops={d.local_crops}: multi-crop is for method.name={'|'.join(MULTI_CROP)}; "
                        f"{cfg.method.name} uses 2 views, so set data.local_crops=0")
    no_local = [f"aug.{key}" for key in ("blur_prob", "solarize_prob") if len(getattr(cfg.aug, key)) < 3]
    if d.local_crops and no_local:  # else the local crops would take the second global view's probabilities
        raise UserError(f"data.local_crops={d.local_crops} needs a third value in {' and '.join(no_local)} for the "
                        "local crops (DINO's: blur 0.5, solarize 0): e.g. --set aug.blur_prob=[1.0,0.1,0.5] --set "
                        "aug.solarize_prob=[0.0,0.2,0.0], as the fmnist-dino-repre preset sets them")
    if d.local_crops and d.local_size > d.image_size:
        raise UserError(f"data.local_size={d.local_size} must be between 1 and data.image_size={d.image_size}")
    if d.streamed and d.subset:
        raise UserError(f"data.subset={d.subset} picks images by index, which streamed shards do not have: name "
                        "fewer shards in data.root (a shorter {a..b} range), or set data.shard_access=random for "
                        "local shards")
    if d.streamed and t.max_steps <= 0 and d.stream_size <= 0:
        raise UserError("streamed shards have no index to count their images: set data.stream_size=N (the images in "
                        "all shards; train.epochs then means N images each) or train.max_steps")
