import contextlib
import dataclasses
import functools
import os
import re

import pytest
import timm
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LOCAL_AUG, TINY
from repre.config import Config, all_keys, config_from_dict, list_presets, load_config, parse_overrides
from repre.errors import UserError


def test_every_preset_loads():
    presets = list_presets()
    assert {"fmnist-mocov3-repre", "fmnist-mocov3", "in1k-vit-s16-mocov3-repre"} <= set(presets)
    for name in presets:
        cfg = load_config(name)
        assert cfg.preset == name and cfg.description


def test_baseline_preset_differs_only_in_the_branch():
    a, b = load_config("fmnist-mocov3-repre").to_dict(), load_config("fmnist-mocov3").to_dict()
    assert a["recon"]["enabled"] and not b["recon"]["enabled"]
    for d in (a, b):
        d["recon"].pop("enabled"), d.pop("preset"), d.pop("description")
    assert a == b


def test_overrides_parse_as_yaml():
    cfg = load_config(None, ["recon.taps=[2,5,8,11]", "recon.enabled=false", "train.lr=1e-3", "data.subset=100"])
    assert cfg.recon.taps == [2, 5, 8, 11] and cfg.recon.enabled is False
    assert cfg.train.lr == 1e-3 and cfg.data.subset == 100
    for item in ("train.lr=1_000", "train.batch_size=1_000"):  # YAML 1.2 text: float() alone took the first
        with pytest.raises(UserError, match=r"must be (float|int), got '1_000' \(str\)"):
            load_config(None, [item])


def test_unknown_key_names_the_nearest():
    with pytest.raises(UserError, match="train.batch_size"):
        load_config(None, ["train.batchsize=3"])
    with pytest.raises(UserError, match="recon.weight"):
        load_config(None, ["recon.wieght=1"])
    with pytest.raises(UserError, match=r"'trian.max_steps'; did you mean 'train.max_steps'"):  # a section's typo
        load_config(None, ["trian.max_steps=2"])
    # a key without its section: the keys of that last part (it suggested the section 'eval' for `lr`)
    with pytest.raises(UserError, match=r"'lr'; did you mean 'train.lr', 'eval.linear.lr' or 'eval.finetune.lr'\?"):
        load_config(None, ["lr=1"])
    with pytest.raises(UserError, match=r"'k'; did you mean 'eval.knn.k'\?"):
        load_config(None, ["k=1"])


def test_python_s_none_and_a_list_without_brackets_are_told_how_yaml_spells_them():
    """`data.root=None` was a folder named None in the current directory; `data.subset=None` and
    `recon.taps=1,3,5` were refused without the spelling that works."""
    with pytest.raises(UserError, match=r"data.root=None is the text 'None' in YAML: write null .*\./None"):
        load_config(None, ["data.root=None"])
    with pytest.raises(UserError, match=r"data.subset=None is the text 'None' in YAML: write null for no value"):
        load_config(None, ["data.subset=None"])
    assert load_config(None, ["data.subset=null"]).data.subset is None
    assert load_config(None, ["data.subset=~"]).data.subset is None
    with pytest.raises(UserError, match=r"got '1,3,5' \(write a list as \[a, b\] with --set\)"):
        load_config(None, ["recon.taps=1,3,5"])


def test_a_lone_tilde_for_a_root_says_yaml_reads_it_as_null(tmp_path, monkeypatch):
    """`--set data.root=~` meant the home folder and read the default root: the shell leaves a lone ~ as is."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("data.root", "eval.segment.root"):
        with pytest.raises(UserError, match=rf"{key}=~: YAML reads ~ as null .* write {key}=~/, for no value"):
            load_config(None, [f"{key}=~"])
    assert load_config(None, ["data.root=~/"]).data.root == str(tmp_path)


def test_a_lone_block_scalar_header_is_named_not_read_as_an_empty_text():
    """`--set description=|` was YAML's empty block scalar: the description silently ''."""
    for text in ("|", ">-"):
        with pytest.raises(UserError, match=rf"YAML reads a lone \{text[0]}.* as an empty text; quote it"):
            load_config(None, [f"description={text}"])
    assert load_config(None, ["description='|'"]).description == "|"
    assert load_config(None, ["description=a | b"]).description == "a | b"


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="train.max_steps must be int"):
        load_config(None, ["train.max_steps=ten"])
    with pytest.raises(UserError, match="one of"):
        load_config(None, ["recon.upsample=bicubic"])


@pytest.mark.parametrize(("text", "read_as"), [("2024", "a number"), ("on", "true or false"),
                                               ("pipe: cat a.tar", "a mapping")])
def test_a_text_key_given_what_yaml_reads_as_another_type_says_to_quote_it(text, read_as):
    """A folder named 2024 or `on`, a `pipe:` command with a space: the message says how to pass the text,
    which then loads as written."""
    with pytest.raises(UserError, match=f"YAML read it as {read_as}: for the text, quote it"):
        load_config(None, [f"data.root={text}"])
    assert load_config(None, [f"data.root='{text}'"]).data.root.endswith(text)  # a folder: made absolute


def test_a_text_key_left_empty_is_said_to_be_null_not_a_number():
    with pytest.raises(UserError, match=r"preset must be str, got None \(NoneType\); YAML read it as null"):
        load_config(None, ["preset="])


def test_local_crops_need_their_own_blur_and_solarization():
    """With two values the local crops would take the second global view's (blur 0.1, solarize 0.2, not DINO's
    0.5 and 0): refused, the message naming the values to set, which then load."""
    two_views = ["method.name=dino", "data.local_crops=4"]
    with pytest.raises(UserError, match=r"aug.blur_prob and aug.solarize_prob .* --set aug.blur_prob=\[1.0,0.1,0.5\]"):
        load_config(None, two_views)
    cfg = load_config(None, [*two_views, "aug.blur_prob=[1.0,0.1,0.5]", "aug.solarize_prob=[0.0,0.2,0.0]"])
    assert cfg.aug.blur_prob[2] == 0.5


def test_an_older_run_s_local_crops_keep_the_probabilities_they_trained_with(tmp_path):
    """A run's config from before the refusal (two values, local crops) still loads (`migrate`, which reads a
    checkpoint's config for --resume, eval and export too): its local crops' value, the second, written out as
    the third."""
    import yaml

    raw = load_config(None, ["method.name=dino", "data.local_crops=4", *LOCAL_AUG]).to_dict()
    raw["aug"].update(blur_prob=[1.0, 0.1], solarize_prob=[0.0, 0.2])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.aug.blur_prob == [1.0, 0.1, 0.1] and again.aug.solarize_prob == [0.0, 0.2, 0.2]


def test_config_file_round_trip(tmp_path):
    from repre.config import save_yaml

    cfg = load_config(None, ["train.max_steps=7"])
    save_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_missing_file_and_unknown_preset():
    with pytest.raises(UserError, match="does not exist"):
        load_config("nope.yaml")
    with pytest.raises(UserError, match="fmnist-mocov3"):
        load_config("fmnist-mocov")


def test_an_existing_file_under_a_preset_name_is_read_and_the_shadowed_preset_named(
        tmp_path, monkeypatch, repre_log):
    """The CLI contract: an existing file is a file. `repre config P > P` and an edit mean the file."""
    from repre.config.loading import given_keys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-mocov3").write_text("_base_: fmnist-dino\nmethod:\n  dino:\n    teacher_temp: 0.05\n")
    cfg = load_config("fmnist-mocov3")
    assert (cfg.method.name, cfg.method.dino.teacher_temp) == ("dino", 0.05)
    assert "--config fmnist-mocov3 reads the file" in repre_log.text and "not the preset" in repre_log.text
    assert "method.dino.teacher_temp" in given_keys("fmnist-mocov3", None)
    monkeypatch.chdir(tmp_path.parent)
    assert load_config("fmnist-mocov3").method.name == "mocov3"
    # `repre config P > P`: the shell makes P, empty, before repre reads --config P; the preset is printed
    import subprocess
    import sys

    (tmp_path / "fmnist-mocov3").unlink()
    with open(tmp_path / "fmnist-mocov3", "w") as out:
        done = subprocess.run([sys.executable, "-m", "repre", "config", "--config", "fmnist-mocov3"], cwd=tmp_path,
                              stdout=out, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, done.stderr
    assert "preset: fmnist-mocov3" in (tmp_path / "fmnist-mocov3").read_text()


def test_a_copy_of_a_preset_and_a_piped_config_are_read(tmp_path):
    """A root preset copied under its own name (to set data.root) was refused as "lacking the sections ," ;
    `--config <(repre config ...)` was an unknown preset, and a command reads its config more than once."""
    from importlib import resources

    for name in list_presets():
        text = resources.files("repre.presets").joinpath(f"{name}.yaml").read_text()
        if "_base_" not in text:
            (tmp_path / f"{name}.yaml").write_text(text)
            assert load_config(tmp_path / f"{name}.yaml") == load_config(name)
    for steps in (7, 9):  # the second pipe gets the first one's /dev/fd/N: its own text is read
        read, write = os.pipe()
        os.write(write, f"_base_: fmnist-dino\ntrain: {{max_steps: {steps}}}\n".encode())
        os.close(write)
        try:
            pipe = f"/dev/fd/{read}"
            assert load_config(pipe).train.max_steps == load_config(pipe).train.max_steps == steps
            assert load_config(pipe).preset == "fmnist-dino"  # its base's label, not the descriptor's number
        finally:
            os.close(read)


def test_an_empty_config_name_is_refused_not_read_as_the_default():
    """`--config "$CFG"` with CFG unset trained the default preset."""
    with pytest.raises(UserError, match="--config is empty: give a preset name"):
        load_config("")


def test_a_full_config_of_one_s_own_labelled_a_preset_takes_today_s_defaults(tmp_path):
    """A file with every section and `preset: mine` read as a run's config from before recon.out_stride (1);
    one repre wrote then holds the recon keys removed since, and only that one keeps the former default."""
    sections = "data: {}\naug: {}\nmodel: {}\nmethod: {}\ntrain: {}\neval: {}\n"
    (tmp_path / "mine.yaml").write_text("preset: mine\nrecon: {weight: 0.5}\n" + sections)
    assert load_config(tmp_path / "mine.yaml").recon.out_stride == 4
    (tmp_path / "old.yaml").write_text("preset: mine\nrecon: {weight: 0.5, norm_pix: false, min_width: 8}\n"
                                       + sections)
    assert load_config(tmp_path / "old.yaml").recon.out_stride == 1
    (tmp_path / "copy.yaml").write_text("preset: mine\nrecon: {weight: 0.5, norm_pix: true}\n" + sections)
    assert load_config(tmp_path / "copy.yaml").recon.out_stride == 4  # a preset's copy holds norm_pix too


def test_a_seed_beyond_torch_s_range_is_refused_with_its_bound():
    """1.7e18 passed and crashed the sampler's Generator.manual_seed with a traceback."""
    assert load_config(None, ["train.seed=4294967295"]).train.seed == 2**32 - 1
    with pytest.raises(UserError, match=r"train.seed must be in \[0, 4,294,967,295\]"):
        load_config(None, ["train.seed=1700000000000000000"])


def test_config_files_that_cannot_mean_what_they_say_are_refused(tmp_path):
    """A key written twice (YAML keeps the last silently), a file that is not text, a folder (a run's: its
    config.yaml named)."""
    (tmp_path / "dup.yaml").write_text("train:\n  max_steps: 10\n  max_steps: 20\n")
    with pytest.raises(UserError, match=r"dup.yaml is not valid YAML at line 3, column 3: 'max_steps: 20': key "
                                        r"'max_steps' is given twice in this mapping \(keep one of them\)"):
        load_config(str(tmp_path / "dup.yaml"))
    for text, said in (  # the usual slips of a hand-written file: where, and what to do
            ("train:\n\tmax_steps: 5\n", r"at line 2, column 1: 'max_steps: 5': .*\(indent with spaces"),
            ("train:\n  max_steps: 5\n lr: 2\n", r"at line 3, column 2: 'lr: 2': .*\(a key indented other than"),
            ("train:\n  max_steps: 5\n    lr: 2\n", r"at line 3, column 7: 'lr: 2': .*\(a key indented deeper"),
            ("train: {max_steps: 5\n", r"at line 2, column 1 \(the end of the file\): .*from line 1: 'train: "),
            ("train:\n  max_steps:5\n", r"train must be a mapping, got 'max_steps:5' \(YAML needs a space after a "
                                       r"key's colon: max_steps: 5\)"),
            ("train:\n  max_steps:5\n  lr: 1\n", r"at line 3, .*\(line 2, 'max_steps:5': YAML needs a space after a "
                                                 r"key's colon: max_steps: 5\)"),  # it ran on into line 3
            ("train: {max_steps:5}\n", r"train.max_steps:5 is a key without a value \(YAML needs a space"),
            ("model:\n  kwargs:\n    depth:8\n", r"model.kwargs must be a mapping, got 'depth:8' \(YAML needs")):
        (tmp_path / "slip.yaml").write_text(text)
        with pytest.raises(UserError, match=said):
            load_config(str(tmp_path / "slip.yaml"))
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_config(str(tmp_path / "bin.yaml"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("")
    with pytest.raises(UserError, match=f"is a folder; a run's: give --config {tmp_path / 'run' / 'config.yaml'}"):
        load_config(str(tmp_path / "run"))
    (tmp_path / "merged.yaml").write_text("train: {<<: {max_steps: 20, log_every: 5}, max_steps: 30}\n")
    merged = load_config(str(tmp_path / "merged.yaml")).train  # a YAML merge key: the key after it overrides
    assert (merged.max_steps, merged.log_every) == (30, 5)


def test_a_folder_named_as_a_preset_leaves_the_preset_as_it_was(tmp_path, monkeypatch):
    """runs/fmnist-mocov3-repre/ is the default --out: within runs/ the preset of that name is still the preset."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-mocov3-repre").mkdir()
    (tmp_path / "fmnist-mocov3").write_text("a log, say")
    assert load_config("fmnist-mocov3-repre") == load_config(None)
    with pytest.raises(UserError, match="reads the file .* not the preset of that name; for the preset, rename"):
        load_config("fmnist-mocov3")  # an existing file is read (the CLI contract): a stray one is named


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["train.max_steps"])
    with pytest.raises(UserError, match=r"--set recon.taps=\[1,3: the value is not valid YAML"):
        parse_overrides(["recon.taps=[1,3"])
    with pytest.raises(UserError, match=r"--set model.kwargs=\{depth: 2, depth: 4\}: key 'depth' is given twice"):
        parse_overrides(["model.kwargs={depth: 2, depth: 4}"])


def test_batch_size_needs_negatives():
    with pytest.raises(UserError, match="at least 2"):
        load_config(None, ["train.batch_size=1"])


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(all_keys()),
    value=st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.text(max_size=5), st.booleans()),
)
def test_any_override_either_loads_or_fails_cleanly(key, value):
    """Every key/value pair gives a valid Config or a UserError, never another exception; a nested key's override
    reaches its own key (eval.knn.k, not eval.knn), and a config that loads holds the value given."""
    override = functools.reduce(lambda inner, name: {name: inner}, reversed(key.split(".")), value)
    try:
        cfg = load_config(None, override)
    except UserError:
        return
    assert isinstance(cfg, Config)
    assert config_from_dict(cfg.to_dict()) == cfg
    got = functools.reduce(getattr, key.split("."), cfg)
    if key not in ("data.root", "eval.segment.root"):  # a local root is made absolute
        expected = value
        if isinstance(got, float) and isinstance(value, str):  # a float key reads text as a number ("1e-3")
            with contextlib.suppress(ValueError):
                expected = float(value)
        assert got == expected or (got != got and expected != expected), (key, value, got)  # NaN is NaN


@pytest.mark.parametrize("setting,message", [
    ("train.lr=-1", "train.lr must be >= 0"),
    ("aug.hue=0.7", "aug.hue must be in [0, 0.5]"),
    ("eval.linear.lrs=[0.1,-1]", "eval.linear.lrs must be > 0"),
    ("model.drop_path=1.0", "model.drop_path must be in [0, 1)"),
    ("aug.crop_scale=[0.9,0.2]", "aug.crop_scale must be two numbers [low, high]"),
    ("method.dino.out_dim=0", "method.dino.out_dim must be > 0"),
    ("eval.linear.features=max", "eval.linear.features must be one of cls, avg, both or null, got 'max'"),
    ("eval.linear.batch_size=x", "eval.linear.batch_size must be int or null, got 'x'"),
])
def test_every_numeric_range_is_checked_before_a_run(setting, message):
    """Each section's `ranges`: a value torch would fail on later is refused when the config loads (exit 2)."""
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, [setting])


def test_every_numeric_field_has_a_range():
    """Every int or float key (a list's items too) is named in its section's `ranges`, nested sections'
    (method.mocov3, eval.knn, ...) as well as the top-level ones'."""
    import typing

    def unchecked(cls: type, prefix: str) -> list[str]:
        keys = []
        hints = typing.get_type_hints(cls)
        for name, tp in ((f.name, hints[f.name]) for f in dataclasses.fields(cls)):
            key = f"{prefix}{name}"
            if dataclasses.is_dataclass(tp):
                keys += unchecked(tp, f"{key}.")
                continue
            parts = {tp, *typing.get_args(tp), *(a for t in typing.get_args(tp) for a in typing.get_args(t))}
            if {int, float} & parts and name not in getattr(cls, "ranges", {}) and key != "recon.taps":
                keys.append(key)  # recon.taps: indices, negative allowed
        return keys

    missing = unchecked(Config, "")
    assert not missing, f"numeric keys without a range in their section's `ranges`: {missing}"


def test_run_only_names_fields_of_its_section():
    """A section's `run_only` names its own fields (a misspelt name would leave a key refused on resume), and
    RUN_ONLY_KEYS finds them in nested sections."""
    import dataclasses

    from repre.config import RUN_ONLY_KEYS, Config, all_keys, sections

    expected = set()
    for name, values in [("", Config()), *sections(Config())]:
        names = {f.name for f in dataclasses.fields(values)}
        assert getattr(values, "run_only", set()) <= names, name
        expected |= {f"{name}.{key}".lstrip(".") for key in getattr(values, "run_only", set())}
    assert set(RUN_ONLY_KEYS) == expected and expected <= set(all_keys())  # every section's, nested ones too
    assert {"eval.knn.quick_train", "model.grad_checkpointing", "description"} <= set(RUN_ONLY_KEYS)


@pytest.mark.parametrize("setting,new", [
    ("eval.knn_k=5", "eval.knn.k"),
    ("eval.segment_root=/data", "eval.segment.root"),
    ("eval.linear_blocks=4", "eval.linear.blocks"),
    ("eval.knn=false", "eval.knn.enabled"),
    ("method.temperature=0.1", "method.dino.student_temp"),
    ("method.mlp_dim=2048", "method.dino.hidden_dim"),
    ("method.queue_size=1024", "method.moby.queue_size"),
    ("train.warmup_steps=40", "train.warmup_fraction"),
])
def test_an_old_key_names_its_new_one(setting, new, tmp_path):
    """Keys of an older repre, in --set or in a YAML file, fail with the key to write instead."""
    with pytest.raises(UserError, match=re.escape(new)):
        load_config(None, [setting])
    key, value = setting.split("=")
    section, name = key.split(".", 1)
    (tmp_path / "old.yaml").write_text(f"_base_: fmnist-mocov3-repre\n{section}:\n  {name}: {value}\n")
    with pytest.raises(UserError, match=re.escape(new)):
        load_config(str(tmp_path / "old.yaml"))


def test_a_config_written_by_an_older_repre_loads_with_its_values():
    """A checkpoint's or run's config.yaml from before the keys were grouped (flat method and eval keys)."""
    old = load_config("fmnist-dino-repre").to_dict()
    old["method"] = {"name": "dino", "momentum": 0.98, "temperature": 0.1, "proj_dim": 256, "mlp_dim": 1024,
                     "freeze_patch_embed": False, "queue_size": 4096, "out_dim": 1024, "norm_last_layer": True,
                     "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_fraction": 0.0,
                     "center_momentum": 0.9, "freeze_last_layer_fraction": 0.05}
    old["eval"] = {"knn": False, "knn_k": 7, "linear_blocks": 4, "finetune_lr": 3e-3, "segment_root": "/seg",
                   "recon_images": 4, "quick_knn_test": 500, "batch_size": 128, "knn_train_subset": 0}
    cfg = config_from_dict(old)
    assert cfg.to_dict()["method"]["dino"] == load_config("fmnist-dino-repre").to_dict()["method"]["dino"]
    e = cfg.eval
    assert (e.knn.enabled, e.knn.k, e.linear.blocks, e.finetune.lr, e.segment.root, e.recon.images, e.knn.quick_test,
            e.batch_size) == (False, 7, 4, 3e-3, "/seg", 4, 500, 128)
    assert e.knn.train_subset is None  # 0.1.0's 0 meant all images


def test_a_config_written_before_the_branch_s_measured_defaults_keeps_the_branch_it_trained(tmp_path):
    """recon.norm_pix and recon.out_stride default to the presets' measured choices: a run's config written
    without out_stride (a checkpoint's, a run's config.yaml, from before the key) trained x2 steps to full
    resolution and reads so; every config repre wrote holds norm_pix, so one without it is a person's and gets
    today's default, as a config of one's own without `_base_` gets the measured ones."""
    import yaml

    from repre.branch import ReconstructionBranch

    old = load_config("fmnist-mocov3-repre").to_dict()
    del old["recon"]["out_stride"]
    # written out as every key was then, with the keys removed since
    old["recon"].update(norm_pix=False, loss="l1", min_width=8, depth=1)
    assert (config_from_dict(old).recon.norm_pix, config_from_dict(old).recon.out_stride) == (False, 1)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))  # a run's, as --resume reads it
    assert (load_config(str(tmp_path / "config.yaml")).recon.out_stride) == 1
    for key in ("loss", "min_width", "depth"):  # a person's file shaped like a run's (a preset's copy, labelled)
        del old["recon"][key]
    assert (config_from_dict(old).recon.norm_pix, config_from_dict(old).recon.out_stride) == (False, 4)
    (tmp_path / "mine.yaml").write_text("recon:\n  weight: 0.5\n")  # a person's, no _base_
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert (mine.recon.norm_pix, mine.recon.out_stride, mine.recon.weight) == (True, 4, 0.5)
    assert (Config().recon.norm_pix, Config().recon.out_stride) == (True, 4)
    branch = ReconstructionBranch(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4))
    assert branch.norm_pix and len(branch.decoder.up) == 2 and branch.decoder.out_stride == 4  # 16 -> 4, shuffled


def test_a_removed_option_loads_at_the_value_the_code_has_and_is_refused_at_another():
    """An older run's config holds every REMOVED key: at the value the code computes with now it reads as it
    was; another value computed what this repre cannot (refused with the option's fate); a person writing the
    key is told the same."""
    from repre.config.migrate import REMOVED

    old = load_config("fmnist-mocov3-repre").to_dict()
    for key, (now, _) in REMOVED.items():
        section, name = key.split(".")
        old[section][name] = now
    assert config_from_dict(old) == load_config("fmnist-mocov3-repre")
    old["recon"] |= {"weight": 0.5, "weight_end": 0.5}  # lambda's schedule from 0.5 to 0.5: the constant 0.5
    assert config_from_dict(old).recon.weight == 0.5
    old["recon"] |= {"weight_end": 0.1}
    with pytest.raises(UserError, match=r"recon.weight_end=0.1, which repre 0.2.0 removed"):
        config_from_dict(old)
    old["recon"] |= {"weight_end": None, "depth": 3}
    with pytest.raises(UserError, match=r"recon.depth=3, which repre 0.2.0 removed \(the decoder has no blocks"):
        config_from_dict(old)
    with pytest.raises(UserError, match="'recon.weight_end' was removed in repre 0.2.0: lambda .recon.weight. is"):
        load_config(None, ["recon.weight_end=0.0"])


def test_an_older_warm_up_in_steps_keeps_its_length(repre_log):
    """train.warmup_steps (removed) becomes the fraction of max_steps that rounds back to the same steps."""
    from repre.core.schedules import RunSchedules

    old = load_config("fmnist-mocov3-repre").to_dict()
    old["train"] |= {"warmup_steps": 37, "warmup_fraction": 0.1, "max_steps": 800}
    lr = RunSchedules.build(config_from_dict(old), 800).lr
    assert int(lr.argmax()) == 37  # the peak: the first step after a 37-step warm-up
    old["train"] |= {"max_steps": 0, "epochs": 3}
    assert config_from_dict(old).train.warmup_fraction == 0.1  # an epoch budget: its fraction, with a warning
    assert "warm-up of 37 steps" in repre_log.text
    old["train"] |= {"max_steps": 20, "epochs": 0}
    assert config_from_dict(old).train.warmup_fraction == 1.0  # longer than the run: the whole run, as before


def test_a_root_under_home_is_expanded():  # the shell leaves `--set data.root=~/photos` as it is
    from pathlib import Path

    cfg = load_config(None, ["data.root=~/photos", "eval.segment.root=~/scenes"])
    assert cfg.data.root == str(Path.home() / "photos") and cfg.eval.segment.root == str(Path.home() / "scenes")


def test_a_relative_root_is_kept_absolute_and_a_remote_one_as_given(tmp_path, monkeypatch):
    """A run started in one directory finds its images from any other (`repre eval`, `--resume`, compare)."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.name=folder", "data.root=photos", "eval.segment.root=../scenes"])
    assert cfg.data.root == str(tmp_path / "photos") and cfg.eval.segment.root == str(tmp_path.parent / "scenes")
    for remote in ("https://host/shards-{000..009}.tar", "pipe:aws s3 cp s3://b/s-000.tar -", "s3://b/s-{0..9}.tar"):
        assert load_config(None, ["data.name=shards", f"data.root={remote}"]).data.root == remote
    (tmp_path / "scans").mkdir()  # your own code's root: a path where it names one, else its own text
    own = ["data.name=python", "data.source=mine:scans"]
    assert load_config(None, [*own, "data.root=scans"]).data.root == str(tmp_path / "scans")
    assert load_config(None, [*own, "data.root=table_2024"]).data.root == "table_2024"


def test_repre_config_prints_what_pretrain_would_run_and_takes_it_back(tmp_path):
    """`repre config` prints the resolved config of a preset and overrides, as a run's config.yaml; given back
    as --config it is the same config; a wrong key exits 2 as pretrain would."""
    from conftest import run_cli

    code, printed = run_cli(["config", "--config", "fmnist-dino", "--set", "train.max_steps=7"])
    assert code == 0
    expected = load_config("fmnist-dino", ["train.max_steps=7"])
    (tmp_path / "dino.yaml").write_text(printed)
    assert load_config(str(tmp_path / "dino.yaml")) == expected and expected.data.local_crops == 4
    assert run_cli(["config", "--set", "train.max_stepz=7"])[0] == 2


def test_an_empty_mapping_clears_a_preset_s_and_a_model_that_does_not_build_names_its_kwargs():
    """A mapping `--set` gives below a section replaces the preset's: `model.kwargs={}` drops the ViT-S preset's
    {num_heads: 12} (merged, {} changed nothing), a later dotted key goes into it, and a dotted key alone or a
    section's mapping merge. A model.arch its kwargs do not fit says which kwargs, not timm's error alone."""
    from repre.builder import build_encoder

    preset = "in1k-vit-s16-mocov3-repre"
    assert load_config(preset).model.kwargs == {"num_heads": 12}
    assert load_config(preset, ["model.kwargs={}"]).model.kwargs == {}
    assert load_config(preset, ["model.kwargs={depth: 2}"]).model.kwargs == {"depth": 2}
    assert load_config(preset, ["model.kwargs={}", "model.kwargs.depth=2"]).model.kwargs == {"depth": 2}
    assert load_config(preset, ["model.kwargs.depth=2"]).model.kwargs == {"num_heads": 12, "depth": 2}
    assert load_config(preset, ["train={}"]).train == load_config(preset).train  # a section merges
    dino = load_config("fmnist-dino-repre", ["method.dino={teacher_temp: 0.07}"]).method.dino  # a nested one too
    assert dino == dataclasses.replace(load_config("fmnist-dino-repre").method.dino, teacher_temp=0.07)
    for value in ("", "5", "[1, 2]"):  # a section given a value: said, not a traceback
        with pytest.raises(UserError, match="data is a section; set its keys"):
            load_config(preset, [f"data={value}"])
    small = ["model.arch=vit_pico_patch4", "data.image_size=16", "data.name=synthetic"]
    with pytest.raises(UserError, match=r"^cannot build model.arch=vit_pico_patch4 at data.image_size=16 with "
                       r"model.kwargs \{num_heads: 12\}: .*divisible.*; set model.kwargs to fit it"):
        build_encoder(load_config(preset, small))
    assert build_encoder(load_config(preset, [*small, "model.kwargs={}"])).embed_dim == 128


def test_a_mapping_key_glued_to_its_value_is_refused_with_the_fix():
    """`{depth:8}` is YAML for a key "depth:8" without a value: timm drops it, and the run would train another
    model than the one asked for."""
    with pytest.raises(UserError, match=r"reads 'depth:8' as a key without a value; write a space after the "
                                        r"colon: \{depth: 8\}"):
        load_config(None, ["model.kwargs={patch_size: 4, depth:8}"])
    assert load_config(None, ["model.kwargs={depth: 8}"]).model.kwargs == {"depth": 8}



def test_the_classes_defaults_do_not_claim_a_preset():
    """`Config()` holds the classes' defaults, which differ from every preset's (batch, lr, heads...): a run of
    it is recorded as "defaults", not as the default preset it is not."""
    from repre.config import DEFAULT_PRESET

    assert Config().preset == "defaults" and load_config(None).preset == DEFAULT_PRESET
    assert Config().train.batch_size != load_config(None).train.batch_size


def test_a_section_mapping_merges_with_what_came_before_it_and_a_values_mapping_replaces():
    """`--set train.lr=0.2 --set 'train={seed: 3}'`: both hold (the mapping dropped the lr); a mapping for a key
    that is a value (model.kwargs) replaces the preset's, in a section's mapping, a Python mapping or a file."""
    cfg = load_config(None, ["train.lr=0.2", "train={seed: 3}", "method.mocov3={temperature: 0.3}",
                             "method={mocov3: {proj_dim: 64}}"])
    assert (cfg.train.lr, cfg.train.seed) == (0.2, 3)
    assert (cfg.method.mocov3.temperature, cfg.method.mocov3.proj_dim) == (0.3, 64)
    for overrides in (["model={kwargs: {}}"], {"model": {"kwargs": {}}}, ["model.kwargs={}"]):
        assert load_config("in1k-vit-s16-mocov3-repre", overrides).model.kwargs == {}
    assert load_config("in1k-vit-s16-mocov3-repre", ["model.kwargs.depth=8"]).model.kwargs == {"num_heads": 12,
                                                                                            "depth": 8}


@pytest.mark.parametrize("overrides,message", [
    (["model.kwargs.img_size=32"], "model.kwargs.img_size=32: repre sets it from data.image_size"),
    (["model.kwargs.drop_path_rate=0.1"], "repre sets it from model.drop_path"),
    (["train.lr=inf"], "train.lr must be >= 0 and finite, got inf"),
    (["eval.linear.lrs=[]"], "eval.linear.lrs is an empty list"),
    (["eval.finetune.crop_scale=[0.9, 0.1]"], r"eval.finetune.crop_scale must be two numbers \[low, high\]"),
])
def test_values_that_would_crash_later_or_pass_as_another_are_refused(overrides, message):
    """Each passed validation, then crashed at the first batch or the probe's first sweep (a traceback), or
    trained with something else than the config says (inf, a drop path beside model.drop_path)."""
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)
    load_config(None, ["model.kwargs.img_size=28"])  # the same as data.image_size: as it was


def test_a_dotted_key_in_a_file_and_a_file_as_base_say_what_to_write(tmp_path):
    (tmp_path / "dotted.yaml").write_text("train.lr: 0.1\n")
    with pytest.raises(UserError, match=r"'train.lr' is a dotted key: in a YAML file, nest it"):
        load_config(str(tmp_path / "dotted.yaml"))
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\n")
    with pytest.raises(UserError, match="_base_: base.yaml is no preset"):
        load_config(str(tmp_path / "child.yaml"))


def test_numbers_read_as_yaml_1_2_reads_them():
    """PyYAML's YAML 1.1 read `010` as 8, `1:30` as 90 and `1e-5` as a string, which model.kwargs handed to timm
    as one (a typed key was mended, a kwarg not)."""
    assert load_config(None, ["train.max_steps=010"]).train.max_steps == 10
    assert load_config(None, ["model.kwargs.init_values=1e-5"]).model.kwargs == {"init_values": 1e-5}
    assert parse_overrides(["a.b=1:30", "a.c=.inf", "a.d=0x10"])["a"] == {"b": "1:30", "c": float("inf"), "d": 16}


def test_a_printed_config_edited_by_a_person_is_read_as_written_not_as_an_older_run_s(tmp_path):
    """`repre config` and a run's config.yaml carry the repre that wrote them: a copy with a key deleted takes
    today's default (not the one an older run's config without that key trained with), and one switched to
    DINO's local crops with two blur values is refused with the fix (not read as an older run's)."""
    from repre.config import to_yaml

    printed = to_yaml(load_config(None))
    assert printed.startswith("repre_version: ")
    (tmp_path / "edited.yaml").write_text(printed.replace("  out_stride: 4\n", ""))
    assert load_config(str(tmp_path / "edited.yaml")).recon.out_stride == 4  # an older run's would read 1
    dino = printed.replace("  name: mocov3\n", "  name: dino\n").replace("  local_crops: 0\n", "  local_crops: 4\n")
    (tmp_path / "dino.yaml").write_text(dino)
    with pytest.raises(UserError, match="needs a third value in aug.blur_prob"):
        load_config(str(tmp_path / "dino.yaml"))
    # a repre before KEYS_VERSION and out_stride wrote it (with the recon keys of then, such as min_width): read
    # in its keys, as it trained (out_stride's former default)
    (tmp_path / "older.yaml").write_text(printed.replace("  out_stride: 4\n", "  min_width: 8\n").replace(
        printed.splitlines()[0], "repre_version: 0.1.0"))
    assert load_config(str(tmp_path / "older.yaml")).recon.out_stride == 1


def test_a_config_of_a_newer_repre_says_so(tmp_path, repre_log):
    from repre.config import to_yaml

    printed = to_yaml(load_config(None))
    (tmp_path / "newer.yaml").write_text(printed.replace(printed.splitlines()[0], "repre_version: 9.0.0"))
    assert load_config(str(tmp_path / "newer.yaml")) == load_config(None)
    assert "a config written by repre 9.0.0, newer than this one" in repre_log.text


def test_files_that_would_run_defaults_under_a_preset_s_name_are_refused(tmp_path):
    """An empty file (a failed `repre config > FILE` leaves one), comments alone, and a printed config trimmed to
    a few keys that keeps `preset: NAME` (a label: the rest would be repre's defaults, not NAME's)."""
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing here\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=f"config file .*{name} holds no settings"):
            load_config(str(tmp_path / name))
    (tmp_path / "short.yaml").write_text("preset: fmnist-dino\ntrain:\n  max_steps: 400\n")
    with pytest.raises(UserError, match="names `preset: fmnist-dino` but lacks the sections data, aug, model, "
                                        "method, recon, eval, .*write `_base_: fmnist-dino`"):
        load_config(str(tmp_path / "short.yaml"))
    (tmp_path / "fmnist-dino.yaml").write_text("train:\n  max_steps: 400\nrecon:\n")  # named as it, recon null
    with pytest.raises(UserError, match="fmnist-dino.yaml is named as the preset fmnist-dino but lacks the sections "
                                        "data, aug, model, method, recon, eval,"):
        load_config(str(tmp_path / "fmnist-dino.yaml"))
    (tmp_path / "based.yaml").write_text("_base_: fmnist-dino\ntrain:\n  max_steps: 400\n")
    based = load_config(str(tmp_path / "based.yaml"))
    assert (based.method.name, based.train.max_steps, based.preset) == ("dino", 400, "based")
    (tmp_path / "mine.yaml").write_text("preset: my-sweep\ntrain:\n  max_steps: 400\n")  # a label of one's own
    assert load_config(str(tmp_path / "mine.yaml")).preset == "my-sweep"


@pytest.mark.parametrize("text", ["1e-3", "1e5", "0o17", "0x10", "010", "12", ".5", "true", "null", "~", "2:30"])
def test_a_text_value_is_written_so_that_it_reads_back_as_text(text, tmp_path):
    """PyYAML writes by YAML 1.1's rules, where `1e-3` is a string and goes unquoted; the loader reads YAML 1.2's
    numbers: a config file named 1e-3.yaml made `preset: 1e-3`, which --resume then refused as a float."""
    from repre.config import save_yaml

    cfg = load_config(None, [f"description={text!r}", "model.kwargs={tag: '" + text + "'}"])
    assert cfg.description == text and cfg.model.kwargs == {"tag": text}
    save_yaml(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # a Path too


def test_a_set_value_cut_by_a_yaml_comment_is_refused_with_the_quotes_to_write():
    with pytest.raises(UserError, match=r"YAML reads '#3' as a comment, so the value would be '/data/run'; quote"):
        parse_overrides(["data.root=/data/run #3"])
    with pytest.raises(UserError, match=r"YAML reads '#x' as a comment, so the value would be None"):
        parse_overrides(["data.root=#x"])
    with pytest.raises(UserError, match=r"quote a value that holds #: --set \"description='it''s #3'\""):
        parse_overrides(["description=it's #3"])
    assert parse_overrides(["description='it''s #3'"]) == {"description": "it's #3"}  # the fix reads back
    with pytest.raises(UserError, match=r"the value would be \[0.5, 0.5\]; drop the comment"):
        parse_overrides(["data.mean=[0.5, 0.5]  # rgb"])
    assert parse_overrides(['description="run #3"', "description2=a#b"]) == {"description": "run #3",
                                                                               "description2": "a#b"}


def test_a_missing_config_path_object_says_so():
    from pathlib import Path

    with pytest.raises(UserError, match="config file nope.yaml does not exist"):
        load_config(Path("nope.yaml"))


def test_keys_given_for_a_framework_that_does_not_run_are_said(tmp_path, repre_log, monkeypatch):
    """`--set method.dino.*` (or a file of one's own) on a MoCo v3 run changes nothing: a warning names them;
    a preset's or a run's config, which hold every framework's section, says nothing."""
    from conftest import pretrain_args, run_cli
    from repre.config import given_keys

    assert given_keys(None, ["method.dino.teacher_temp=0.07", "train.lr=1"]) == {"method.dino.teacher_temp",
                                                                                 "train.lr"}
    (tmp_path / "mine.yaml").write_text("_base_: fmnist-mocov3\nmethod:\n  moby:\n    queue_size: 8\n")
    assert given_keys(str(tmp_path / "mine.yaml"), []) == {"method.moby.queue_size"}
    assert given_keys("fmnist-dino", []) == set()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stray").write_text("")  # the run stops at --out: the warning came before it
    args = pretrain_args(tmp_path / "run", "method.name=mocov3")
    code, _ = run_cli([*args, "--set", "method.dino.teacher_temp=0.07"])
    assert code == 2
    idle = sorted({item.partition("=")[0] for item in TINY if item.startswith("method.")
                   and not item.startswith("method.mocov3.")} | {"method.dino.teacher_temp"})  # TINY's other heads
    assert (f"{', '.join(idle)}: read only with the method each names, and this run trains method.name=mocov3: "
            "they change nothing") in repre_log.text
    code, _ = run_cli([*args, "--set", "recon.enabled=false", "--set", "recon.width=8"])  # the baseline's
    assert code == 2 and ("recon.width: read only with the reconstruction branch, and this run has "
                          "recon.enabled=false: it changes nothing") in repre_log.text
    code, _ = run_cli([*args, "--set", "method.name=supervised", "--set", "method.momentum=0.9"])
    assert code == 2 and ("method.momentum: method.name=supervised has no momentum or teacher encoder, so it "
                          "changes nothing") in repre_log.text
    # train.epochs where the preset's max_steps sets the length (fmnist-dino: 1,600 steps): said
    code, _ = run_cli(["pretrain", "--config", "fmnist-dino", "--out", str(tmp_path / "run"), "--set",
                       "train.epochs=1"])
    assert code == 2 and "train.epochs=1 changes nothing: train.max_steps=1600 (the preset's)" in repre_log.text
    code, _ = run_cli(["pretrain", "--config", "fmnist-dino", "--out", str(tmp_path / "run"), "--set",
                       "train.epochs=1", "--set", "train.max_steps=0"])
    assert code == 2 and repre_log.text.count("train.epochs=1 changes nothing") == 1
    import repre.pretraining  # under torchrun every process reads the config: the first alone warns

    monkeypatch.setattr(repre.pretraining, "pretrain", lambda *args, **kwargs: {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        repre_log.clear()
        assert run_cli([*args, "--set", "recon.enabled=false", "--set", "recon.width=8"])[0] == 0
        assert ("recon.width: read only with the reconstruction branch" in repre_log.text) == (rank == "0")


def test_a_file_s_label_that_names_another_shipped_preset_than_its_base_is_refused(tmp_path):
    """`_base_: fmnist-dino` with `preset: fmnist-mocov3` trained DINO filed under MoCo v3's name."""
    (tmp_path / "mine.yaml").write_text("_base_: fmnist-dino\npreset: fmnist-mocov3\n")
    with pytest.raises(UserError, match=r"`preset: fmnist-mocov3` over `_base_: fmnist-dino`: `preset` is a label"):
        load_config(tmp_path / "mine.yaml")
    for label in ("fmnist-dino", "my-dino"):  # its base's name, or a label of one's own
        (tmp_path / "mine.yaml").write_text(f"_base_: fmnist-dino\npreset: {label}\n")
        assert load_config(tmp_path / "mine.yaml").preset == label


def test_a_label_that_names_another_shipped_preset_is_refused():
    """`--set preset=fmnist-dino` on a MoCo v3 config would file a MoCo v3 run under DINO's name."""
    with pytest.raises(UserError, match=r"--set preset=fmnist-dino: `preset` is a label .* this config is "
                                        r"fmnist-mocov3-repre's, not the preset fmnist-dino: give --config "
                                        r"fmnist-dino"):
        load_config(None, ["preset=fmnist-dino"])
    assert load_config("fmnist-dino", ["preset=fmnist-dino"]).preset == "fmnist-dino"  # its own name
    assert load_config(None, ["preset=mine"]).preset == "mine"


def test_a_printed_config_with_keys_deleted_says_they_take_the_defaults(tmp_path, repre_log):
    """`repre config` output edited down (a line deleted) is still labelled the preset; the keys it lost take
    repre's defaults, not the preset's: said, naming them. The whole printed config says nothing."""
    from conftest import run_cli

    code, text = run_cli(["config", "--config", "fmnist-dino"])
    assert code == 0
    (tmp_path / "whole.yaml").write_text(text)
    load_config(tmp_path / "whole.yaml")
    assert "lacks" not in repre_log.text
    cut = ("out_dim", "local_crops", "mlp_dim")  # mlp_dim: MoCo v3's and MoBY's, which a DINO run does not read
    (tmp_path / "cut.yaml").write_text("".join(line for line in text.splitlines(keepends=True)
                                               if not any(key in line for key in cut)))
    cfg = load_config(tmp_path / "cut.yaml")
    assert cfg.data.local_crops == 0 and cfg.preset == "fmnist-dino"
    assert ("cut.yaml is labelled fmnist-dino but lacks data.local_crops, method.dino.out_dim, which fmnist-dino "
            "sets: they take repre's defaults, not fmnist-dino's") in repre_log.text


def test_a_list_of_the_wrong_items_names_the_item():
    with pytest.raises(UserError, match=r"recon.taps\[0\] must be int, got 1.5"):
        load_config(None, ["recon.taps=[1.5,3]"])
    with pytest.raises(UserError, match=r"recon.taps=\[\] names no block"):
        load_config(None, ["recon.taps=[]"])


def test_the_default_out_is_named_by_the_preset_a_set_gives(tmp_path, monkeypatch, capsys):
    from conftest import TINY, run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "foo").mkdir(parents=True)
    (tmp_path / "runs" / "foo" / "stray").write_text("")  # stops the run at --out: the folder it chose
    args = ["pretrain", "--set", "preset=foo", *[a for item in TINY for a in ("--set", item)]]
    code, _ = run_cli(args)
    assert code == 2 and "--out runs/foo holds" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "fmnist-mocov3-repre").exists()


def test_a_batch_the_processes_do_not_divide_is_refused_with_advice_a_resume_can_follow():
    """A new run can change its batch; a resumed one cannot (its config is fixed): the process count that divides
    it is the advice then."""
    from repre.config import check_global_batch

    check_global_batch("train.batch_size", 16, 4)
    with pytest.raises(UserError, match="not divisible by the 3 processes; use a multiple of 3"):
        check_global_batch("train.batch_size", 16, 3)
    with pytest.raises(UserError, match=r"a resumed run keeps its batch: launch a number of processes that divides "
                                        r"it \(1, 2, 4, 8, 16\)"):
        check_global_batch("train.batch_size", 16, 3, resuming=True)
