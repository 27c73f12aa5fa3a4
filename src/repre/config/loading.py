"""Where a config comes from: the presets shipped in `repre/presets` (a `_base_` layers one over another), YAML
files, a run's own config.yaml, `--set key=value` overrides; and back out as YAML."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from repre._version import __version__
from repre.config.checks import build_section, glued_fix, sections, validate
from repre.config.migrate import KEYS_VERSION, migrate, renamed_message
from repre.config.schema import DEFAULT_PRESET, Config, idle_sections
from repre.errors import UserError

log = logging.getLogger("repre")


def list_presets() -> dict[str, str]:
    """Preset name -> description, from the YAML files shipped in `repre/presets`; the default first."""
    out = {}
    default = f"{DEFAULT_PRESET}.yaml"
    entries = sorted(resources.files("repre.presets").iterdir(), key=lambda p: (p.name != default, p.name))
    for entry in entries:
        if entry.name.endswith(".yaml"):
            raw = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(raw.get("description", ""))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML would keep the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: the merged keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in this mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)

# Numbers as YAML 1.2 reads them (and people write them): PyYAML follows YAML 1.1, where `010` is octal 8,
# `1:30` is 90 (base 60) and `1e-5` (no dot) is a string, which reached timm as one through model.kwargs.
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+)$"),
                                       list("-+0123456789"))
_UniqueKeyLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
                       r"|^\.(?:nan|NaN|NAN)$"), list("-+0123456789."))


def _yaml_12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    base = 16 if digits.startswith("0x") else 8 if digits.startswith("0o") else 10
    return sign * int(digits[2:] if base != 10 else digits, base)


_UniqueKeyLoader.add_constructor(_INT, _yaml_12_int)


# PyYAML's words for the usual slips of a hand-written file -> what to do
_YAML_HINTS = {
    "'\\t'": "indent with spaces: YAML takes no tabs",
    "mapping values are not allowed here": "a key indented deeper than the keys beside it, or a value holding "
                                           "': ', which needs quotes",
    "expected <block end>": "a key indented other than the keys beside it: align it with them",
    "is given twice": "keep one of them",
}


def _yaml_error(exc: yaml.YAMLError, where: str) -> str:
    """`where` is not valid YAML: the line and column, PyYAML's problem, the line itself, and what to do."""
    mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"{where} is not valid YAML: {problem}"
    lines = (mark.buffer or "").rstrip("\0").splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else ""
    if not line and opened is not None and opened.line < len(lines):  # at the end: where what is unclosed began
        problem += f", {getattr(exc, 'context', '')} from line {opened.line + 1}: {lines[opened.line].strip()!r}"
    hint = next((what for words, what in _YAML_HINTS.items() if words in problem), "")
    glued = [n for n in (mark.line - 1, mark.line) if 0 <= n < len(lines) and glued_fix(lines[n].strip())]
    if glued:  # `max_steps:5` is one string, which runs on into the next line: the slip is there
        hint = f"line {glued[0] + 1}, {lines[glued[0]].strip()!r}: {glued_fix(lines[glued[0]].strip())}"
    shown = f": {line!r}" if line else " (the end of the file)"
    return (f"{where} is not valid YAML at line {mark.line + 1}, column {mark.column + 1}{shown}: {problem}"
            + (f" ({hint})" if hint else ""))


def read_yaml(text: str, where: str) -> dict[str, Any]:
    """A YAML mapping as a config file is read (YAML 1.2's numbers: `1e-3` a float; a key written twice
    refused); `where` names it in the error of a file that is not one."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader: no code runs from the file
    except yaml.YAMLError as exc:
        raise UserError(_yaml_error(exc, where)) from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must hold a mapping of config sections, got {type(raw).__name__}")
    return raw


def _preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    presets = list_presets()
    if name not in presets:
        near = difflib.get_close_matches(name, presets, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UserError(f"unknown preset {name!r}.{hint} `repre presets` lists them; a file path must exist.")
    raw = read_yaml(resources.files("repre.presets").joinpath(f"{name}.yaml").read_text(), f"preset {name}")
    raw.setdefault("preset", name)
    return _resolve_base(raw, seen + (name,))


def _resolve_base(raw: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    """A `_base_: preset-name` key layers this mapping over that preset."""
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    if base in seen:
        raise UserError(f"preset inheritance loops through {base!r}")
    if str(base) not in list_presets():
        near = difflib.get_close_matches(str(base), list_presets(), n=3)
        raise UserError(f"_base_: {base} is no preset{' (did you mean ' + ', '.join(near) + '?)' if near else ''}: "
                        "_base_ names a preset (`repre presets` lists them), not a file")
    merged = _preset_dict(str(base), seen)
    merged.pop("preset", None)
    deep_update(merged, wholes(raw))  # model.kwargs: this file's, not merged into the base's
    return merged


SECTION_KEYS = frozenset(name for name, _ in sections(Config()))  # "data", "method.dino", "eval.knn", ...


class Whole(dict):
    """A mapping `--set` gives whole below a section (`--set 'model.kwargs={depth: 8}'`): it replaces the one
    before it, where a section's (`--set 'train={lr: 0.1}'`) and a dotted key's merge."""


def deep_update(dst: dict[str, Any], src: dict[str, Any], keep_whole: bool = False) -> None:
    """`src`'s values into `dst`: a mapping merges into the one there, but for a `Whole` one, which replaces it
    (`keep_whole`: as a `Whole`, for overrides merged before they meet the config)."""
    for key, value in src.items():
        if isinstance(value, Whole):
            dst[key] = value if keep_whole else dict(value)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict) and not isinstance(dst.get(key), Whole):
            deep_update(dst[key], value, keep_whole)
        else:
            dst[key] = value


def wholes(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A mapping of the section `prefix` ("": the whole config) with the mappings it gives for keys that are
    values (`model.kwargs`) marked `Whole`: each replaces the one before it, as `--set 'model.kwargs={...}'`
    does, where the sections' own mappings merge."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and not isinstance(value, Whole):
            value = wholes(value, full) if full in SECTION_KEYS else Whole(value)
        out[key] = value
    return out


# the key of a config repre wrote (`to_yaml`) naming the repre that wrote it: a file with it is in that repre's keys
# (a person's edit of it included), one without it that is `_resolved` a run's of a repre before the key
VERSION_KEY = "repre_version"


def read_written(raw: dict[str, Any], refuse_removed: bool = True) -> tuple[dict[str, Any], bool]:
    """A config mapping read from YAML -> (it in today's keys, without `VERSION_KEY`; whether a repre wrote it).
    A resolved config in older keys (written by a repre before `KEYS_VERSION`, or before configs named their
    repre) is `migrate`d: read as it was trained (`refuse_removed`: as `migrate`'s). One in today's keys, a
    person's edit of it included, is taken as it is."""
    raw = dict(raw)
    written = raw.pop(VERSION_KEY, None)
    if written is not None and _version(written) > _version(__version__):
        log.warning("a config written by repre %s, newer than this one (%s): the keys it added are unknown here "
                    "(pip install -U repre)", written, __version__)
    older = written is None or _version(written) < _version(KEYS_VERSION)
    if older and _resolved(raw):
        return migrate(raw, refuse_removed), True
    return raw, written is not None


def _version(text: Any) -> tuple[int, ...]:
    """"0.2.0" -> (0, 2, 0): the version's numbers (a suffix such as ".dev3" left out)."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text).split("+")[0])[:3])


def _resolved(raw: dict[str, Any]) -> bool:
    """Whether a mapping is a resolved config that repre wrote (a run's config.yaml: every section and the
    preset it came from), not a file a person wrote."""
    sections = [f.name for f in dataclasses.fields(Config) if f.name not in ("preset", "description")]
    return "preset" in raw and "_base_" not in raw and all(isinstance(raw.get(name), dict) for name in sections)


def source_dict(source: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The raw mapping of a preset name or YAML file (`None`: the default preset)."""
    if source is not None and not os.fspath(source).strip():  # `--config "$CFG"` with CFG unset
        raise UserError("--config is empty: give a preset name (`repre presets` lists them) or a YAML file, or "
                        f"leave --config out for the default preset, {DEFAULT_PRESET}")
    source = os.fspath(source) if source is not None else DEFAULT_PRESET
    path = Path(source).expanduser()  # ~: the home folder, from Python as from a shell
    if path.exists() and not path.is_dir() and not path.is_file():  # <(repre config ...), /dev/stdin: read it
        return _file_dict(path, source)
    if path.is_dir() and source not in list_presets():  # a preset's name stays the preset's beside a run folder
        run = path / "config.yaml"
        hint = (f"a run's: give --config {run} to train with its settings, or --out {path} --resume to go on with it"
                if run.is_file() else "give a preset name or a YAML file")
        raise UserError(f"--config {source} is a folder; {hint}")
    if path.is_file():  # an existing file is read, as the CLI contract says, even under a preset's name
        if source not in list_presets():
            return _file_dict(path, source)
        if _being_written(path):  # `repre config P > P`: the shell made P, empty, for this command's output
            return _preset_dict(source)
        # `repre config P > P`, edited: the file is what the person means; a stray one is named as the cause
        shadow = f"the file {path.resolve()} here, not the preset of that name; for the preset, rename the file " \
                 "or run from another folder"
        try:
            raw = _file_dict(path, source)
        except UserError as exc:
            raise UserError(f"{exc}\n--config {source} reads {shadow}") from None
        if (source, str(path.resolve())) not in _SHADOWS_SAID:  # a command reads its config more than once
            _SHADOWS_SAID.add((source, str(path.resolve())))
            log.warning("--config %s reads %s", source, shadow)
        return raw
    if source.endswith((".yaml", ".yml")):
        raise UserError(f"config file {source} does not exist (a preset name has no .yaml ending)")
    return _preset_dict(source)


_SHADOWS_SAID: set[tuple[str, str]] = set()  # (preset name, file) pairs whose shadowing was said


def _being_written(path: Path) -> bool:
    """Whether `path` is this process's standard output (`repre config P > P`: the shell makes the file first)."""
    try:
        return os.path.samestat(os.fstat(1), path.stat())
    except (OSError, ValueError):
        return False


_PIPED: dict[tuple[int, int], str] = {}  # `--config <(...)`'s text by the pipe's (device, inode), as first read


def _text(path: Path) -> str:
    """A config file's text; a pipe's as first read (it reads once, and a command reads its config more than
    once), by the pipe itself: a later pipe may be given the same /dev/fd/N."""
    if path.is_file():
        return path.read_text(encoding="utf-8")
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino)
    if key not in _PIPED:
        _PIPED[key] = path.read_text(encoding="utf-8")
    return _PIPED[key]


def _file_dict(path: Path, source: str) -> dict[str, Any]:
    """The raw mapping of a YAML file (a run's config.yaml taken as it is, another resolved over its `_base_`)."""
    try:
        text = _text(path)
    except UnicodeDecodeError:
        raise UserError(f"config file {source} is not UTF-8 text: give a YAML file") from None
    raw = read_yaml(text, str(path))
    if not raw:  # it would run repre's defaults, which are no preset's
        raise UserError(f"config file {source} holds no settings (it is empty or comments only; a failed "
                        "`repre config > FILE` leaves it empty): give a preset, or a YAML file that starts "
                        "from one with `_base_: PRESET`")
    by = raw.get(VERSION_KEY)
    raw, written = read_written(raw)
    if written and _resolved(raw):  # a run's own config.yaml, or `repre config`'s output
        if _version(by) >= _version(__version__):  # an older repre's lacks the keys added since, rightly
            _warn_of_keys_left_out(raw, source)
        return raw
    label, base = raw.get("preset"), raw.get("_base_")
    if base is not None and isinstance(label, str) and label != base and label in list_presets():
        raise UserError(f"config file {source}: `preset: {label}` over `_base_: {base}`: `preset` is a label (the "
                        f"run's folder, summary and card name it), and this config is {base}'s with the file's keys, "
                        f"not the preset {label}: drop `preset:` (the file's name labels it) or give a label of "
                        "your own")
    # a file named as a preset is labelled it: the same rule; a pipe (no name of its own) by its base
    raw.setdefault("preset", path.stem if path.is_file() else str(raw.get("_base_") or "piped"))
    _refuse_a_preset_label_alone(raw, source)
    _warn_of_keys_left_out(raw, source)
    return _resolve_base(raw, ())


def _warn_of_keys_left_out(raw: dict[str, Any], source: str) -> None:
    """Said where a file of every section without `_base_`, labelled a shipped preset, lacks keys that preset
    sets to other values than repre's defaults (a printed config with lines deleted): they take the defaults.
    Not refused: a run's config written before a key existed lacks it, and rightly takes its default (one
    written by an older repre is not checked)."""
    preset = raw.get("preset")
    if "_base_" in raw or not isinstance(preset, str) or preset not in list_presets():
        return
    default, given, theirs = flatten(Config().to_dict()), flatten(raw), flatten(_preset_dict(preset))
    method = given.get("method.name", theirs.get("method.name", default["method.name"]))
    branch = given.get("recon.enabled", theirs.get("recon.enabled", default["recon.enabled"]))
    unread = idle_sections(method, branch)  # another framework's keys, and a disabled branch's: the run reads none
    lost = sorted(k for k, v in theirs.items() if k in default and k not in given and v != default[k]
                  and k not in ("preset", "description") and not k.startswith(unread))
    if lost:
        log.warning("config file %s is labelled %s but lacks %s, which %s sets: %s repre's default%s, not %s's "
                    "(write `_base_: %s` with the keys you change to start from the preset)", source, preset,
                    ", ".join(lost), preset, "it takes" if len(lost) == 1 else "they take",
                    "" if len(lost) == 1 else "s", preset, preset)


def _refuse_a_preset_label_alone(raw: dict[str, Any], source: str) -> None:
    """A file of some sections naming a shipped preset in `preset:` (a printed config trimmed to what changes)
    would be labelled that preset while the rest of it is repre's defaults: `_base_` is what starts from one."""
    preset = raw.get("preset")
    if "_base_" in raw or not isinstance(preset, str) or preset not in list_presets():
        return
    missing = [f.name for f in dataclasses.fields(Config)
               if f.name not in ("preset", "description") and not isinstance(raw.get(f.name), dict)]
    sections = set(_preset_dict(preset)) - {"preset", "description"}
    if missing and not (sections <= set(raw)):  # a copy of a preset without `_base_` (a root preset) is that preset
        named = f"names `preset: {preset}`" if Path(source).stem != preset else f"is named as the preset {preset}"
        raise UserError(f"config file {source} {named} but lacks the sections {', '.join(missing)}, "
                        f"which would be repre's defaults, not {preset}'s: `preset:` (or a file's name) is a label; "
                        f"write `_base_: {preset}` to start from that preset (with the keys you change), or give "
                        f"every section (`repre config --config {preset}` prints them)")


def override_items(overrides: Sequence[str] | None) -> list[str]:
    """`--set` items as Python gives them (a list or tuple of "key=value" strings, or None) -> a list; one string
    alone (it would be read letter by letter) or a mapping raises TypeError."""
    if overrides is None:
        return []
    items = None if isinstance(overrides, str | Mapping) else list(overrides)  # a generator read once
    if items is None or not all(isinstance(item, str) for item in items):
        raise TypeError(f"overrides are 'key=value' strings in a list, e.g. ['train.max_steps=20'], not "
                        f"{overrides!r} (load_config also takes a mapping)")
    return items


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`["a.b=1", "c.d=[1,2]"]` -> nested mapping; values parse as YAML, in order (a later item wins). A mapping
    for a key that is a value is `Whole`: `model.kwargs={}` clears a preset's kwargs, and a later
    `model.kwargs.depth=8` goes into it; one for a section merges (`method.dino={teacher_temp: 0.07}`)."""
    out: dict[str, Any] = {}
    for item in override_items(items):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value (e.g. train.max_steps=20), got {item!r}")
        try:
            value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else None  # a SafeLoader
        except yaml.constructor.ConstructorError as exc:  # a key written twice (`_unique_mapping`)
            raise UserError(f"--set {item}: {exc.problem}") from None
        except yaml.YAMLError as exc:
            if text.strip().startswith(("[", "{")):  # meant as a list or mapping: say where it breaks
                raise UserError(f"--set {item}: the value is not valid YAML ({str(exc).splitlines()[0]}); write a "
                                "list as [a, b], a mapping as {key: value}") from None
            value = text
        if (dropped := _comment_dropped(text, value)) is not None:
            quoted = "'" + text.strip().replace("'", "''") + "'"  # YAML's single quotes: ' doubled, nothing else
            fix = (f"quote a value that holds #: --set \"{key.strip()}={quoted}\"" if isinstance(value, str | None)
                   else "drop the comment")
            raise UserError(f"--set {item}: YAML reads {dropped!r} as a comment, so the value would be {value!r}; "
                            f"{fix}")
        if re.fullmatch(r"[|>][-+0-9]*", text.strip()):  # a block scalar's header with no block: YAML's ''
            raise UserError(f"--set {item}: YAML reads a lone {text.strip()} as an empty text; quote it for the "
                            f"character (--set \"{key.strip()}='{text.strip()}'\"), or --set \"{key.strip()}=''\" "
                            "for none")
        if text.strip() == "~" and key.strip().endswith("root"):  # the shell leaves a lone ~ as it is
            raise UserError(f"--set {item}: YAML reads ~ as null (no value); for the home folder write "
                            f"{key.strip()}=~/, for no value {key.strip()}=null")
        if (glued := _glued_key(value)) is not None:
            name, _, given = glued.partition(":")
            raise UserError(f"--set {item}: YAML reads {glued!r} as a key without a value; write a space after "
                            f"the colon: {{{name}: {given}}}")
        _place(out, key.strip(), value)
    return out


def _comment_dropped(text: str, value: Any) -> str | None:
    """The part of a `--set` value that YAML dropped as a comment (` #...`: `data.root=/data/run #3` is
    "/data/run"), or None where it kept every character (`"run #3"` quoted, `a#b`)."""
    found = re.search(r"(?:^|\s)#", text)
    if found is None:
        return None
    try:
        before = yaml.load(text[:found.start()], Loader=_UniqueKeyLoader) if text[:found.start()].strip() else None
    except yaml.YAMLError:  # the # is inside a quoted string or a flow collection that it does not end
        return None
    return text[found.start():].strip() if before == value else None


def _glued_key(value: Any) -> str | None:
    """The first key of a mapping in `value` (nested included) written `key:value` without a space, which YAML
    reads as one key `"key:value"` with no value (`{depth:8}` sets nothing), or None."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k and not k.endswith(":"):
                return k
            if (inner := _glued_key(v)) is not None:
                return inner
    if isinstance(value, list):
        return next((g for v in value if (g := _glued_key(v)) is not None), None)
    return None


def _place(out: dict[str, Any], key: str, value: Any) -> None:
    """`value` into the nested mapping `out` at the dotted `key`; a mapping for a key that is a value (such as
    `model.kwargs`) is `Whole`, one for a section (`method.dino`, `eval.knn`) merges as the section's keys do."""
    node, parts = out, key.split(".")
    if key in SECTION_KEYS and not isinstance(value, dict):  # (a key of an older repre there: its new name)
        raise UserError(renamed_message(key) or f"--set {key}={value!r}: {key} is a section; set its keys "
                        f"({key}.KEY=VALUE) or give a mapping ({key}={{KEY: VALUE}})")
    if isinstance(value, dict):  # a section's merges with what came before it; a value's (model.kwargs) replaces
        value = wholes(value, key) if key in SECTION_KEYS else Whole(value) if len(parts) > 1 else value
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is set both as a value and as a section")
    deep_update(node, {parts[-1]: value}, keep_whole=True)


def given_keys(source: str | os.PathLike[str] | None, overrides: Sequence[str] | None) -> set[str]:
    """The keys a person gave (flat, "method.dino.teacher_temp"): `overrides`', and those of a YAML file of their
    own at `source` (not a preset's, not those of a config repre wrote, which holds every key)."""
    keys = set(flatten(parse_overrides(override_items(overrides))))
    path = Path(os.fspath(source)).expanduser() if source else None
    if path is not None and path.exists() and not path.is_dir():  # a file, or a pipe (`_text`)
        raw, _ = read_written(read_yaml(_text(path), str(path)))
        if not _resolved(raw):
            keys |= set(flatten({k: v for k, v in raw.items() if k != "_base_"}))
    return keys


def load_config(source: str | os.PathLike[str] | None = None,
                overrides: Sequence[str] | Mapping[str, Any] | None = None) -> Config:
    """Defaults <- preset or YAML file <- overrides; validated. The Python entry point of `--config/--set`.
    `overrides`: `--set` items (["train.max_steps=20"]), or a mapping: sections ({"train": {"max_steps": 20}},
    merged into the preset's) or dotted keys ({"train.max_steps": 20}, as `--set` gives them)."""
    raw = source_dict(source)
    if isinstance(overrides, Mapping):
        extra: dict[str, Any] = {}
        for key, value in copy.deepcopy(dict(overrides)).items():  # the caller's mapping stays as it was
            if "." in key:
                _place(extra, key, value)
            else:
                deep_update(extra, wholes({key: value}), keep_whole=True)
    else:
        extra = parse_overrides(override_items(overrides))
    label = extra.get("preset")
    if isinstance(label, str) and label != raw.get("preset") and label in list_presets():
        raise UserError(f"--set preset={label}: `preset` is a label (the run's folder, summary and card name it), and "
                        f"this config is {raw.get('preset')}'s, not the preset {label}: give --config {label} to train "
                        "that preset, or a label of your own")
    deep_update(raw, extra)
    cfg = build_section(Config, raw, "")
    validate(cfg)
    return cfg


def config_from_dict(raw: dict[str, Any], migrated: bool = False) -> Config:
    """A Config from a resolved mapping (a checkpoint's or a run's config, from this repre or an older one).
    `migrated`: `raw` is in today's keys already (`migrate`d, then a person's `--set` on top, which gets
    `renamed_message` rather than a migration)."""
    cfg = build_section(Config, raw if migrated else migrate(raw), "")
    validate(cfg)
    return cfg


def checked(cfg: Config, caller: str) -> Config:
    """A Config built in Python (its values changed by hand included), typed and validated as a loaded one:
    a wrong type or range raises `UserError` naming the key; not a Config, TypeError naming `caller`."""
    if not isinstance(cfg, Config):
        raise TypeError(f"{caller} takes a Config, e.g. repre.load_config('fmnist-mocov3-repre', "
                        f"['train.max_steps=20']), not {type(cfg).__name__}")
    return config_from_dict(cfg.to_dict(), migrated=True)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


class _Dumper(yaml.SafeDumper):
    """YAML as `_UniqueKeyLoader` reads it back: a string that it would read as another type (`1e-3`, `0o17`:
    numbers by YAML 1.2's rules, strings by the 1.1 rules PyYAML writes with) is quoted."""


def _represent_str(dumper: _Dumper, value: str) -> yaml.ScalarNode:
    reads_as = _UniqueKeyLoader("").resolve(yaml.ScalarNode, value, (True, False))
    style = "'" if reads_as != "tag:yaml.org,2002:str" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(cfg: Config | dict[str, Any]) -> str:
    """The resolved config as YAML, every key in the order of the config code, after `repre_version` (the repre
    that wrote it, which `read_written` reads to migrate it or not): what a run's config.yaml holds and
    `--config` takes back."""
    return yaml.dump({VERSION_KEY: __version__, **(cfg.to_dict() if isinstance(cfg, Config) else cfg)},
                     Dumper=_Dumper, sort_keys=False)


def save_yaml(cfg: Config | dict[str, Any], path: Path) -> None:
    path.write_text(to_yaml(cfg))
