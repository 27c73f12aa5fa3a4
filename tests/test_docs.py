"""The generated reference stays in step with the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_configuration", ROOT / "docs" / "gen_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_generated_from_the_config_code():
    """docs/configuration.md is what docs/gen_configuration.py writes now: rerun it after changing config/schema.py."""
    assert (ROOT / "docs" / "configuration.md").read_text() == _generator().render(), (
        "docs/configuration.md is stale: run `python docs/gen_configuration.py`")


def test_every_config_key_is_explained():
    from repre.config import all_keys

    text = _generator().render()
    cells = [re.split(r"(?<!\\)\|", line) for line in text.splitlines() if line.startswith("| `")]  # \| is text
    rows = {cell[1].strip().strip("`"): cell[5].strip() for cell in cells}
    assert set(rows) == set(all_keys()) - {"preset", "description"}
    assert not [key for key, meaning in rows.items() if not meaning], "a field of config/schema.py has no comment"


def test_every_module_is_in_the_architecture_s_table():
    """docs/architecture.md's table says what each module owns: a module added without a row fails here (a
    package's `__init__.py` that only documents or re-exports its modules needs none)."""
    root = Path(__file__).parents[1] / "src" / "repre"
    text = (root.parents[1] / "docs" / "architecture.md").read_text()
    table = text[text.index("## Which module owns what"):text.index("## Rules that keep it so")]
    unnamed = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        package_init = path.name == "__init__.py" and path.parent != root
        if rel == "__main__.py" or f"`{rel}`" in table or (package_init and rel != "cli/__init__.py"):
            continue
        if path.name != "__init__.py" and f"`{path.name}`" in table:  # "`methods/mocov3.py`, `dino.py`"
            continue
        unnamed.append(rel)
    assert not unnamed, f"docs/architecture.md's table names no row for {unnamed}"


def test_data_md_lists_the_file_endings_a_folder_reads():
    from repre.data.folder import EXTENSIONS

    text = " ".join((ROOT / "docs" / "data.md").read_text().split())
    listed = ", ".join(f"`{e}`" for e in EXTENSIONS[:-1]) + f" or `{EXTENSIONS[-1]}`"
    assert f"Images are the files ending in {listed}, in any case" in text
