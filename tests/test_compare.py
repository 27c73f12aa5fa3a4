"""`repre compare`: what each run reports against the first run's, and the config keys that differ."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import LOCAL_AUG, last_json, run_cli
from repre.use.tables import _latex_cell


def copy_run(run: Path, to: Path, **config: dict) -> Path:
    """A copy of `run` whose config.yaml sections are updated with `config` (the run's files as they were)."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints", "tb", "eval"))
    raw = yaml.safe_load((to / "config.yaml").read_text())
    for section, values in config.items():
        raw[section].update(values)
    (to / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return to


def test_compare_reads_each_run_against_the_first(tiny_run, tmp_path):
    run, summary = tiny_run
    base = copy_run(run, tmp_path / "a" / "seed0", recon={"enabled": False})
    done = json.loads((base / "summary.json").read_text())
    (base / "summary.json").write_text(json.dumps({**done, "knn_top1": 0.5, "images_per_sec": 100.0}))
    repre = copy_run(run, tmp_path / "b" / "seed0", train={"seed": 7})
    (repre / "summary.json").write_text(json.dumps({**done, "knn_top1": 0.625, "images_per_sec": 80.0,
                                                     "compile_s": 75.0}))
    (repre / "eval" / "linear").mkdir(parents=True)
    (repre / "eval" / "linear" / "result.json").write_text(json.dumps(
        {"task": "linear", "metric": "top1", "value": 0.75, "extra": {},
         "checkpoint": {"step": 10, "encoder": "encoder", "set": ["eval.linear.epochs=2", "train.progress=false"]}}))
    going = copy_run(run, tmp_path / "c" / "going")
    (going / "summary.json").unlink()  # killed, or still training
    with (going / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 25, "kind": "train", "loss_contr')  # the line a crash cut short

    (repre / "checkpoints").mkdir()
    (repre / "checkpoints" / "last.pt").touch()  # a checkpoint stands for its run
    code, stdout = run_cli(["compare", str(base), str(repre / "checkpoints" / "last.pt"), str(going)])
    assert code == 0
    result = last_json(stdout)
    assert result["differences"] == {"recon.enabled": [False, True, True], "train.seed": [0, 7, 0]}
    a, b, c = result["runs"]
    assert (a["loss_recon"], b["loss_recon"]) == (None, summary["loss_recon"])  # no branch: no recon loss
    assert [r["knn_top1"] for r in (a, b, c)] == [0.5, 0.625, None]
    (evaluated,) = b["evaluations"]
    assert {k: v for k, v in evaluated.items() if k != "settings"} == {
        "task": "linear", "metric": "top1", "value": 0.75, "step": 10,
        "set": ["eval.linear.epochs=2", "train.progress=false"]}
    assert "eval.linear.epochs" not in evaluated["settings"] and "eval.linear.protocol" in evaluated["settings"]
    last_train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
                  if json.loads(x)["kind"] == "train"][-1]
    assert (c["completed"], c["steps"], c["loss_contrastive"]) == (None, 20, last_train["loss_contrastive"])
    assert [step for step, _, quick in a["knn"] if quick] == [10]  # train.eval_every=10 of 20 steps
    table = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()[:-1]]
    assert table[0] == ["a/seed0", "b/seed0", "c/going"]  # the fewest trailing parts that tell the runs apart
    rows = {row[0]: row[1:] for row in table[1:]}
    assert rows["steps"] == ["20", "20", "20 no summary"]
    speed = last_train["images_per_sec"]  # without a summary: its last train line's
    assert rows["images/s"] == ["100.0", "80.0 (x0.80)", f"{speed:.1f} (x{speed / 100:.2f})"]
    assert rows["trained on"] == ["cpu fp32", "cpu fp32", "-"]
    assert rows["compile time"] == ["-", "1.2 min", "-"]  # a compiled run's, apart from its training time
    assert rows["knn top-1 (run's end)"] == ["0.5000", "0.6250 (+0.1250)", "-"]
    assert rows["eval linear top1 [epochs=2] @10"] == ["-", "0.7500", "-"]  # an earlier checkpoint's; run-only
    # keys (progress) left out of its label
    assert rows["config keys that differ:"] == [] and rows["train.seed"] == ["0", "7", "0"]


def make_run(folder: Path, *overrides: str, summary: dict | None = None, lines: list[dict] | None = None) -> Path:
    """A run folder as pretrain leaves it, written by hand: config.yaml, and summary.json and metrics.jsonl when
    given."""
    from repre.config import load_config, save_yaml

    folder.mkdir(parents=True)
    save_yaml(load_config(None, list(overrides)), folder / "config.yaml")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if lines is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def rows_of(stdout: str) -> dict[str, list[str]]:
    table = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()[1:-1]]
    return {row[0]: row[1:] for row in table}


def test_compare_reads_what_is_there_and_shows_values_exactly(tmp_path, monkeypatch):
    """A run with its config alone (just started), given alone or twice; config values that differ in their
    fifth decimal; a summary that a resumed run has gone past (its last line counts); `.` as a run."""
    fresh = make_run(tmp_path / "fresh", "train.lr=1.5e-4")
    code, stdout = run_cli(["compare", str(fresh), str(fresh)])
    assert code == 0 and "nothing reported yet" in stdout and "the runs' configs are the same" in stdout
    assert run_cli(["compare", str(fresh)])[0] == 0
    line = {"kind": "train", "loss_contrastive": 1.5, "loss_recon": 0.25}
    stopped = {"completed": False, "steps": 400, "total_steps": 800, "loss_contrastive": 2.0}
    resumed = make_run(tmp_path / "resumed", "train.lr=1.0e-4", summary=stopped,
                       lines=[{**line, "step": 400}, {**line, "step": 600}])
    monkeypatch.chdir(resumed)
    code, stdout = run_cli(["compare", str(fresh), "."])
    assert code == 0 and stdout.splitlines()[0].split() == ["fresh", "resumed"]
    rows = rows_of(stdout)
    assert rows["train.lr"] == ["0.00015", "0.0001"]  # exactly: not 0.0001 twice
    assert rows["steps"] == ["no summary", "600/800 no summary"] and rows["loss_contrastive (last)"] == ["-", "1.5000"]


def test_compare_subtracts_no_evaluations_measured_otherwise(tmp_path):
    """k-NN on other subsets (or k, split) measures something else: its value stands without a difference to
    the first run's, marked; a `repre eval` result of the same --set but other run settings the same."""
    done = {"completed": True, "steps": 8, "total_steps": 8, "knn_top1": 0.5}
    first = make_run(tmp_path / "all", summary=done)
    fewer = make_run(tmp_path / "fewer", "eval.knn.test_subset=2000", "eval.linear.epochs=5",
                     summary={**done, "knn_top1": 0.6})
    same = make_run(tmp_path / "same", "eval.knn.quick_test=100", summary={**done, "knn_top1": 0.55})
    for run, value in ((first, 0.7), (fewer, 0.8)):
        (run / "eval" / "linear").mkdir(parents=True)
        (run / "eval" / "linear" / "result.json").write_text(json.dumps(
            {"task": "linear", "metric": "top1", "value": value, "extra": {}, "checkpoint": {"step": 8, "set": []}}))
    code, stdout = run_cli(["compare", str(first), str(fewer), str(same)])
    rows = rows_of(stdout)
    assert code == 0 and rows["knn top-1 (run's end)"] == ["0.5000", "0.6000 (other settings)", "0.5500 (+0.0500)"]
    assert rows["eval linear top1"] == ["0.7000", "0.8000 (other settings)", "-"]
    elsewhere = make_run(tmp_path / "elsewhere", "data.root=/other/images", summary={**done, "knn_top1": 0.4})
    assert rows_of(run_cli(["compare", str(first), str(elsewhere)])[1])["knn top-1 (run's end)"][1] == (
        "0.4000 (other settings)")  # other images


def test_results_of_one_checkpoint_share_a_row_and_no_other_is_subtracted(tmp_path):
    """The baseline evaluated at step 4 and the RePre run at 4 and at its end (8): the two results at step 4 in
    one row, read against each other; the end's in its own row (against step 4's it was the training between
    them, "+0.0312")."""
    done = {"completed": True, "steps": 8, "total_steps": 8, "knn_top1": 0.5}
    base = make_run(tmp_path / "base", "recon.enabled=false", summary=done)
    repre = make_run(tmp_path / "repre", summary=done)

    def result(run: Path, folder: str, step: int, value: float) -> None:
        (run / "eval" / "knn" / folder).mkdir(parents=True, exist_ok=True)
        (run / "eval" / "knn" / folder / "result.json").write_text(json.dumps(
            {"task": "knn", "metric": "top1", "value": value, "extra": {}, "checkpoint": {"step": step, "set": []}}))

    result(base, "step-00000004", 4, 0.375)
    result(repre, ".", 8, 0.40625)
    result(repre, "step-00000004", 4, 0.4375)
    code, stdout = run_cli(["compare", str(base), str(repre)])
    rows = rows_of(stdout)
    assert code == 0 and rows["eval knn top1 @4"] == ["0.3750", "0.4375 (+0.0625)"]
    assert rows["eval knn top1"] == ["-", "0.4062"]
    assert not any(label.startswith("eval knn top1 (2)") for label in rows)
    stopped = make_run(tmp_path / "stopped", summary={**done, "completed": False, "steps": 4})
    result(stopped, ".", 4, 0.25)  # its last checkpoint, not a run's end
    rows = rows_of(run_cli(["compare", str(repre), str(stopped)])[1])
    assert rows["eval knn top1 @4"] == ["0.4375", "0.2500 (-0.1875)"] and rows["eval knn top1"] == ["0.4062", "-"]


def test_a_run_s_state_and_a_mapping_s_differing_item_are_shown(tmp_path):
    """A diverged run reads "diverged" (it read "stopped", as a Ctrl-C); a run without a summary takes its speed
    from its last train line and its length from its config; two runs whose model.kwargs differ in one item
    show that item (the two long texts were cut to the same middle)."""
    diverged = make_run(tmp_path / "nan", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2}",
                        summary={"completed": False, "diverged": True, "steps": 10, "total_steps": 200})
    going = make_run(tmp_path / "going", "model.kwargs={patch_size: 4, embed_dim: 64, depth: 4, num_heads: 2}",
                     "train.max_steps=400", lines=[{"step": 162, "kind": "train", "images_per_sec": 75.5}])
    code, stdout = run_cli(["compare", str(diverged), str(going)])
    rows, result = rows_of(stdout), last_json(stdout)
    assert code == 0 and rows["steps"] == ["10/200 diverged", "162/400 no summary"]
    assert rows["images/s"] == ["-", "75.5"] and result["runs"][0]["diverged"] is True
    assert result["differences"]["model.kwargs.embed_dim"] == [32, 64] and rows["model.kwargs.embed_dim"] == ["32",
                                                                                                          "64"]
    assert "model.kwargs" not in result["differences"] and "model.kwargs.depth" not in result["differences"]
    plain = make_run(tmp_path / "plain", "model.kwargs={}")  # no item: each of the other's is "-" here
    code, stdout = run_cli(["compare", str(plain), str(going)])
    rows, result = rows_of(stdout), last_json(stdout)
    assert rows["model.kwargs.embed_dim"] == ["-", "64"] and "model.kwargs" not in result["differences"]


def test_measure_settings_leave_out_what_the_result_names_and_what_changes_no_result():
    from repre.config import Config, flatten
    from repre.use.compare import measure_settings

    config = flatten(Config().to_dict())
    linear = measure_settings(config, "linear", ["eval.linear={epochs: 3}", "eval.linear.lrs=[0.1]"])
    assert "eval.linear.protocol" in linear and not {"eval.linear.epochs", "eval.linear.lrs"} & set(linear)
    assert "eval.recon.images" not in measure_settings(config, "recon")  # the picture's rows only
    assert "aug.hflip" in measure_settings(config, "finetune") and "aug.hflip" not in linear
    assert "eval.val_size" not in linear  # read with eval.split=val alone
    assert "eval.val_size" in measure_settings({**config, "eval.split": "val"}, "linear")


def test_compare_takes_old_configs_and_other_frameworks(tmp_path):
    """A config this repre would refuse (a removed option's other value) or wrote with older keys still compares;
    a framework's own keys count for its runs alone, and the losses of different methods are not subtracted."""
    mocov3 = make_run(tmp_path / "mocov3", summary={"completed": True, "steps": 8, "loss_contrastive": 2.0})
    old = yaml.safe_load((mocov3 / "config.yaml").read_text())
    old["method"]["temperature"] = old["method"]["mocov3"].pop("temperature")  # 0.1.0's shared key
    old["recon"]["loss"] = "smooth_l1"  # removed: a run configured so no longer loads
    old["recon"]["depth"] = 1  # removed, at the value the code has now: gone
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.yaml").write_text(yaml.safe_dump(old))
    dino = make_run(tmp_path / "dino", "method.name=dino", "data.local_crops=2", *LOCAL_AUG,
                    summary={"completed": True, "steps": 8, "loss_contrastive": 6.0})
    code, stdout = run_cli(["compare", str(mocov3), str(legacy), str(dino)])
    assert code == 0
    differences = last_json(stdout)["differences"]
    assert differences["recon.loss"] == ["l1", "smooth_l1", "l1"] and "recon.depth" not in differences
    assert differences["method.mocov3.temperature"] == [0.2, 0.2, None]  # the legacy key in today's place
    assert differences["method.dino.out_dim"][:2] == [None, None] and differences["method.dino.out_dim"][2]
    assert rows_of(stdout)["loss_contrastive (last)"] == ["2.0000", "-", "6.0000"]  # no "(+4.0000)"


def test_compare_refuses_what_is_no_run_and_imports_no_torch(tiny_run, tmp_path):
    for wrong in (tmp_path, tmp_path / "typo", tiny_run[0] / "checkpoints" / "step-99999999.pt"):
        assert run_cli(["compare", str(tiny_run[0]), str(wrong)])[0] == 2
    probe = ("import sys, contextlib, io\n"
             "from repre.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    assert main(['compare', {str(tiny_run[0])!r}, {str(tiny_run[0])!r}]) == 0\n"
             "    assert main(['config', '--set', 'train.max_steps=5']) == 0\n"
             "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_seeds_of_one_setting_are_one_column_of_means_and_deviations(tmp_path, repre_log):
    """--seeds: runs that differ in train.seed alone are a column, each number their mean ± sample std (n=...
    where a run lacks it), read against the first setting's: paired by seed (the differences' mean ± std), a
    ratio of the means for speed; the JSON keeps every run."""
    done = {"completed": True, "steps": 8}
    for seed, (knn, speed) in enumerate([(0.5, 100.0), (0.6, 110.0), (0.7, 90.0)]):
        make_run(tmp_path / "base" / f"seed{seed}", f"train.seed={seed}", "recon.enabled=false",
                 summary={**done, "knn_top1": knn, "images_per_sec": speed})
    for seed, knn in enumerate([0.7, 0.8, None]):
        make_run(tmp_path / "repre" / f"seed{seed}", f"train.seed={seed}", "train.device=cpu",  # run-only: same
                 summary={**done, "knn_top1": knn, "images_per_sec": 80.0} if knn else None)
    runs = [str(tmp_path / name / f"seed{seed}") for name in ("base", "repre") for seed in range(3)]
    code, stdout = run_cli(["compare", "--seeds", *runs])
    assert code == 0 and last_json(stdout)["columns"] == [[0, 1, 2], [3, 4, 5]]
    assert len(last_json(stdout)["runs"]) == 6
    assert re.split(r"\s{2,}", stdout.splitlines()[0].strip()) == ["base x 3 runs", "repre x 3 runs"]
    rows = rows_of(stdout)
    assert rows["knn top-1 (run's end)"] == ["0.6000 ± 0.1000", "0.7500 ± 0.0707 (n=2) (+0.2000 ± 0.0000 paired)"]
    assert rows["images/s"] == ["100.0 ± 10.0", "80.0 ± 0.0 (n=2) (x0.80)"]
    assert rows["recon.enabled"] == ["false", "true"] and rows["train.seed"] == ["0, 1, 2", "0, 1, 2"]
    assert len(rows_of(run_cli(["compare", *runs])[1])["train.seed"]) == 6  # without --seeds: a column a run
    other = make_run(tmp_path / "other" / "seed5", "train.seed=5", summary={**done, "knn_top1": 0.9})
    code, stdout = run_cli(["compare", "--seeds", *runs[:3], str(other), runs[3]])  # seeds 5 and 0: not paired
    assert rows_of(stdout)["knn top-1 (run's end)"][1] == "0.8000 ± 0.1414 (+0.2000)"  # the means' difference
    code, stdout = run_cli(["compare", "--seeds", *runs[:3], runs[3]])  # a run alone: named with its folder's
    assert re.split(r"\s{2,}", stdout.splitlines()[0].strip()) == ["base x 3 runs", "repre/seed0"]
    copy = tmp_path / "base" / "copy0"
    shutil.copytree(runs[0], copy)  # a copy of seed 0 beside it: one seed twice in the column, said
    assert run_cli(["compare", "--seeds", str(copy), *runs[:3]])[0] == 0
    assert "runs of the same seed in one column (seeds [0, 0, 1, 2])" in repre_log.text
    from repre.use.compare import Paired, _difference

    assert _difference([0.7], Paired([0.5])) == "0.7000 (+0.2000 paired)"  # one pair: no spread


def test_the_table_as_markdown_and_latex_holds_the_text_table_s_cells_whole(tmp_path):
    """`--format markdown` and `latex`: the same cells as the text table, none cut, each part's note a row of its
    own, and what would break the format escaped (a pipe in Markdown; _, ~, | and ± in LaTeX)."""
    done = {"completed": True, "steps": 8, "loss_contrastive": 2.0}
    runs = [make_run(tmp_path / "base" / f"seed{s}", f"train.seed={s}", "recon.enabled=false",
                     "preset=a | b, ~" + "x" * 80, summary={**done, "knn_top1": 0.5 + s / 100}) for s in (0, 1)]
    runs += [make_run(tmp_path / "repre" / f"seed{s}", f"train.seed={s}", "description=another preset's prose",
                      summary={**done, "knn_top1": 0.6 + s / 50}) for s in (0, 1)]
    given = ["compare", "--seeds", *map(str, runs)]
    text = run_cli(given)[1].splitlines()[:-1]
    code, markdown = run_cli([*given, "--format", "markdown"])
    lines = markdown.splitlines()
    assert code == 0 and lines[:2] == ["| | base x 2 runs | repre x 2 runs |", "|---|---|---|"]
    assert "| knn top-1 (run's end) | 0.5050 ± 0.0071 | 0.6100 ± 0.0141 (+0.1050 ± 0.0071 paired) |" in lines
    assert "| **config keys that differ:** | | |" in lines
    assert f"| preset | a \\| b, ~{'x' * 80} | fmnist-mocov3-repre |" in lines  # whole; its pipe escaped
    assert not any(line.startswith("| description |") for line in lines)  # the presets' prose: `preset` names them
    assert len(lines) == len(text) + 2 and json.loads(lines[-1])["columns"] == [[0, 1], [2, 3]]  # the rule, the JSON
    code, latex = run_cli([*given, "--format", "latex"])
    lines = latex.splitlines()
    assert code == 0 and lines[:3] == [r"\begin{tabular}{lll}", r"\toprule", r" & base x 2 runs & repre x 2 runs \\"]
    assert (r"knn top-1 (run's end) & 0.5050 $\pm$ 0.0071 & 0.6100 $\pm$ 0.0141 (+0.1050 $\pm$ 0.0071 paired) \\"
            in lines)
    assert r"\multicolumn{3}{l}{\emph{config keys that differ:}} \\" in lines
    assert (r"loss\_contrastive (last) & 2.0000 $\pm$ 0.0000 & 2.0000 $\pm$ 0.0000 (+0.0000 $\pm$ 0.0000 paired) \\"
            in lines)
    assert lines[-3:-1] == [r"\bottomrule", r"\end{tabular}"]
    assert _latex_cell("0.5000 (-0.0116) (x1.54) run-2 1e-06") == r"0.5000 ($-$0.0116) ($\times$1.54) run-2 1e-06"
    assert rf"preset & a \textbar{{}} b, \textasciitilde{{}}{'x' * 80} & fmnist-mocov3-repre \\" in lines


def test_results_are_grouped_by_task_their_own_settings_first(tmp_path):
    """Rows of `repre eval` results: by task (k-NN before linear), the run's own settings and end first,
    whatever the order of the result folders."""
    done = {"completed": True, "steps": 8, "total_steps": 8}
    run = make_run(tmp_path / "run", summary=done)
    for task, folder, step, given in [("linear", ".", 8, []), ("knn", "k=5", 8, ["eval.knn.k=5"]),
                                      ("knn", ".", 8, []), ("knn", "step-00000004", 4, [])]:
        (run / "eval" / task / folder).mkdir(parents=True, exist_ok=True)
        (run / "eval" / task / folder / "result.json").write_text(json.dumps(
            {"task": task, "metric": "top1", "value": 0.5, "extra": {}, "checkpoint": {"step": step, "set": given}}))
    labels = [label for label in rows_of(run_cli(["compare", str(run)])[1]) if label.startswith("eval ")]
    assert labels == ["eval knn top1", "eval knn top1 @4", "eval knn top1 [k=5]", "eval linear top1"]


def test_a_damaged_summary_is_read_as_none_and_generated_images_name_their_settings(tmp_path, repre_log):
    """A summary.json whose steps are text: a warning, the run read from its last train line. Runs on generated
    images of other counts measured other images: no difference."""
    done = {"completed": True, "steps": 8, "total_steps": 8, "knn_top1": 0.5}
    first = make_run(tmp_path / "a", "data.name=synthetic", summary=done)
    damaged = make_run(tmp_path / "b", "data.name=synthetic", summary={**done, "steps": "abc"},
                       lines=[{"kind": "train", "step": 6, "loss_contrastive": 1.5}])
    code, stdout = run_cli(["compare", str(first), str(damaged)])
    assert code == 0 and rows_of(stdout)["steps"] == ["8", "6/800 no summary"]  # its length from its config
    assert "summary.json is damaged (steps: 'abc')" in repre_log.text
    other = make_run(tmp_path / "c", "data.name=synthetic", "data.synthetic_test=64", summary=done)
    assert rows_of(run_cli(["compare", str(first), str(other)])[1])["knn top-1 (run's end)"] == [
        "0.5000", "0.5000 (other settings)"]


def test_durations_and_differences_read_at_a_glance():
    from repre.use.compare import _difference, _duration

    assert [_duration([v], None) for v in (9.94, 9.96, 59.96, 600, 3 * 3600 + 120)] == [
        "9.9 s", "10 s", "1.0 min", "10.0 min", "3.03 h"]
    assert _difference([0.65141], [0.651412]) == "0.6514 (+0.0000)"  # no "-0.0000"


def test_a_run_without_a_result_leaves_its_seed_column_measured_alike(tmp_path, repre_log):
    """--seeds: a run that lacks an evaluation had its missing settings counted as other ones, so the column
    read "(other settings)" and lost its difference; the same run given twice is said."""
    done = {"completed": True, "steps": 8, "total_steps": 8}
    runs = []
    for name, values, branch in (("base", (0.5, 0.6), "false"), ("repre", (None, 0.7), "true")):
        for seed, value in enumerate(values):
            run = make_run(tmp_path / name / f"seed{seed}", f"train.seed={seed}", f"recon.enabled={branch}",
                           summary=done)
            if value is not None:
                (run / "eval" / "knn").mkdir(parents=True)
                (run / "eval" / "knn" / "result.json").write_text(json.dumps(
                    {"task": "knn", "metric": "top1", "value": value, "extra": {},
                     "checkpoint": {"step": 8, "set": []}}))
            runs.append(str(run))
    code, stdout = run_cli(["compare", "--seeds", *runs])
    row = rows_of(stdout)["eval knn top1"]
    assert code == 0 and row[0] == "0.5500 ± 0.0707"
    assert "other settings" not in row[1] and row[1].startswith("0.7000 (n=1) (+0.1000")
    assert run_cli(["compare", runs[0], f"{runs[0]}/"])[0] == 0
    assert "the same run given twice" in repre_log.text


def test_results_of_the_same_settings_in_another_order_share_a_row(tmp_path):
    done = {"completed": True, "steps": 8, "total_steps": 8}
    runs = []
    for name, given, value in (("a", ["eval.knn.k=5", "eval.knn.temperature=0.1"], 0.5),
                               ("b", ["eval.knn.temperature=0.1", "eval.knn.k=5"], 0.6)):
        run = make_run(tmp_path / name, summary=done)
        (run / "eval" / "knn" / "x").mkdir(parents=True)
        (run / "eval" / "knn" / "x" / "result.json").write_text(json.dumps(
            {"task": "knn", "metric": "top1", "value": value, "extra": {}, "checkpoint": {"step": 8, "set": given}}))
        runs.append(str(run))
    rows = rows_of(run_cli(["compare", *runs])[1])
    assert rows["eval knn top1 [k=5, temperature=0.1]"] == ["0.5000", "0.6000 (+0.1000)"]
