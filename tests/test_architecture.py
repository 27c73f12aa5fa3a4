"""The layers of docs/architecture.md hold: import-linter's contract in pyproject.toml, the linter's rules, the
type checker's, and a light CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layers_import_only_downward():
    """A module that imports from a layer above its own (lazily or not) breaks the contract and this test.
    In a process of its own: import-linter reconfigures logging, which would silence the other tests' logs."""
    lint = ("import sys\nfrom importlinter.cli import lint_imports\n"
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    done = subprocess.run([sys.executable, "-c", lint], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_passes_its_linter():
    """pyproject.toml's ruff rules (lines of at most 120 characters among them) hold for every Python file."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks", "docs"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_annotations_hold():
    """mypy, as pyproject.toml's [tool.mypy] sets it, finds no error in src/repre: the signatures a reader (and a
    user's type checker: the package ships py.typed) relies on say what the code does."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr


def test_the_command_line_loads_no_torch_until_a_command_runs():
    """`repre --help` and `repre --version` answer at once: the version lives in its own module and `repre`
    loads its API names on first use."""
    probe = ("import sys, contextlib, io\n"
             "from repre.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n"
             "        main(['--help'])\n"
             "    except SystemExit:\n"
             "        pass\n"
             "import repre\n"
             "print(repre.__version__, sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split()[1:] == ["[]"], done.stdout


def test_each_name_of_the_python_api_stays_what_it_names():
    """`repre.NAME` loads on first use; a module of the package with the same name as one of them would replace
    it once imported (Python binds a submodule on its package): `repre.export` was the function, then, after any
    import of the module `repre.export`, that module. Each name is read, its module imported, and read again."""
    import importlib.util
    import types

    import repre

    for name in repre.__all__:
        first = getattr(repre, name)
        importlib.import_module(repre._API.get(name, "repre._version"))
        assert getattr(repre, name) is first and not isinstance(first, types.ModuleType), name
        assert not importlib.util.find_spec(f"repre.{name}"), f"repre.{name} is also a module"


def test_every_framework_is_registered_in_the_config_and_the_methods_alike():
    """A framework is named in two layers: the config (method.name's values, FRAMEWORKS, its method.NAME section,
    whose fields are the class's keyword arguments) and the methods' registry. They must agree: a name missing in
    one would fail late or, worse, evaluate another encoder than the framework's."""
    import dataclasses
    import inspect
    import typing

    from repre.config import FRAMEWORKS, MULTI_CROP, MethodConfig
    from repre.methods import FRAMEWORK_CLASSES, METHODS

    names = set(typing.get_args(typing.get_type_hints(MethodConfig)["name"]))
    assert names == set(METHODS) and set(FRAMEWORKS) == set(FRAMEWORK_CLASSES) <= names
    assert set(MULTI_CROP) == {name for name, cls in FRAMEWORK_CLASSES.items() if cls.multi_crop}
    sections = typing.get_type_hints(MethodConfig)
    for name, cls in FRAMEWORK_CLASSES.items():
        fields = {f.name for f in dataclasses.fields(sections[name])}
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "encoder"}
        assert fields <= accepted, (name, fields - accepted)
        assert_same_defaults(sections[name], cls.__init__)


def assert_same_defaults(section: type, fn) -> None:
    """Each field of a config section has the default of the keyword argument it is passed to: a Python
    caller of the class and a config that leaves the key out get the same value."""
    import dataclasses
    import inspect

    parameters = inspect.signature(fn).parameters
    values = section()
    differ = {f.name: (getattr(values, f.name), parameters[f.name].default) for f in dataclasses.fields(section)
              if f.name in parameters and getattr(values, f.name) != parameters[f.name].default}
    assert not differ, differ


def test_every_eval_section_is_a_task_with_an_evaluation():
    """EVAL_TASKS are the eval.* sections (`repre eval TASK`'s choices): each must have its evaluation."""
    from repre.config import EVAL_TASKS
    from repre.eval import encoder_tasks

    assert set(encoder_tasks()) | {"recon"} == set(EVAL_TASKS)


def test_every_branch_key_of_the_config_reaches_the_branch_with_its_default():
    """recon.* reaches `ReconstructionBranch` by name (builder.py passes every key the wrapper does not read):
    a new key needs its field and the branch's argument, nothing between."""
    import dataclasses
    import inspect

    from repre.branch import ReconstructionBranch
    from repre.builder import RECON_WRAPPER_KEYS
    from repre.config import ReconConfig

    fields = {f.name for f in dataclasses.fields(ReconConfig)} - set(RECON_WRAPPER_KEYS)
    accepted = set(inspect.signature(ReconstructionBranch.__init__).parameters) - {"self", "encoder", "taps"}
    assert fields == accepted
    assert_same_defaults(ReconConfig, ReconstructionBranch.__init__)


def test_the_checkpoint_layout_names_are_the_model_s_attributes():
    """Checkpoints, --init-from and export read a PretrainingModel's state by `repre.reconstruction`'s names: a
    renamed attribute (`.method`, `.branch`, a Backbone's `.model`) fails here, not in a user's export."""
    from conftest import tiny_config
    from repre.builder import build_model
    from repre.pretrained import encoder_keys
    from repre.reconstruction import BRANCH, ENCODER_WEIGHTS, METHOD, encoder_prefix

    state = build_model(tiny_config("method.name=dino", "method.dino.out_dim=64")).state_dict()
    assert all(k.startswith((METHOD, BRANCH)) for k in state) and any(k.startswith(BRANCH) for k in state)
    assert any(k.startswith(encoder_prefix("teacher_encoder") + ENCODER_WEIGHTS) for k in state)
    assert encoder_keys({"model": state}) == ["encoder", "teacher_encoder"]


def test_the_methods_without_an_ema_are_those_the_config_names():
    """`config.schema.NO_EMA_METHODS` (whose method.momentum is read by nothing: warned of, and no obstacle to a
    resume) lists the methods whose `ema_pairs()` is empty, as the config layer cannot ask the classes."""
    from conftest import tiny_config
    from repre.builder import build_model
    from repre.config import idle_sections
    from repre.config.schema import NO_EMA_METHODS
    from repre.methods import METHODS

    without = {name for name in METHODS
               if not build_model(tiny_config(f"method.name={name}"), num_classes=3).method.ema_pairs()}
    assert without == set(NO_EMA_METHODS)
    assert "method.momentum" in idle_sections("supervised") and "method.momentum" not in idle_sections("mocov3")
