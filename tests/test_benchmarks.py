"""The benchmark scripts' shared logic that decides what a number means: which cached run the quality benchmark
reuses, how two searches are paired, what a step's FLOPs count. The scripts themselves train for minutes to
hours and are not run here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_kinds  # noqa: E402
import paired  # noqa: E402
import quality  # noqa: E402

from repre.config import Config, flatten  # noqa: E402


def test_every_config_key_has_the_value_the_quality_cache_keys_against():
    """A key added to the config needs its entry (the value that reproduces the runs made before it), else a
    cached run could be reused for a run that differs in it; a key removed leaves no stale entry."""
    keyed = json.loads(quality.KEYED_DEFAULTS.read_text())
    assert set(keyed) == set(flatten(Config().to_dict()))


def identity(*overrides: str, method: str = "mocov3", row: str = "repre") -> dict:
    return quality.identity(quality.row_config(method, row, 0, list(overrides)))


def test_a_changed_default_keys_the_runs_that_take_it_apart(monkeypatch, tmp_path):
    """The cache keys a value against the default it had when the key came, not today's: runs made before a
    default changed and runs made after it never share a folder."""
    keyed = json.loads(quality.KEYED_DEFAULTS.read_text())
    before = identity()
    keyed["recon.out_stride"] = 1  # as if the default had been 1 when the runs above were keyed
    (tmp_path / "keyed.json").write_text(json.dumps(keyed))
    monkeypatch.setattr(quality, "KEYED_DEFAULTS", tmp_path / "keyed.json")
    after = identity()
    assert before != after and after["recon.out_stride"] == 4


def test_the_cache_ignores_what_a_run_does_not_read_and_keys_what_it_does():
    base = identity(row="baseline")
    assert identity("recon.width=8", "recon.taps=2", row="baseline") == base  # a disabled branch
    assert identity("method.dino.out_dim=512", row="baseline") == base  # another framework's section
    assert identity("train.num_workers=0", "train.progress=true", row="baseline") == base  # runtime keys
    assert identity("train.lr=3e-3", row="baseline") != base
    assert identity("recon.width=8") != identity()
    # a run with the branch and one without never share a folder, whatever their branch keys
    assert identity("recon.width=128") != identity("recon.width=128", "recon.enabled=false")


def test_a_reused_run_of_another_precision_is_refused(monkeypatch, tmp_path):
    """The quality benchmark, knn_seeds and finetune_lr reuse a run whose settings equal theirs: one trained in
    another precision than this machine resolves `auto` to is refused, naming both."""
    import bench_cache

    from repre.config import load_config, to_yaml
    from repre.core import runtime

    given = ["train.seed=1", "train.device=cpu"]
    (tmp_path / "config.yaml").write_text(to_yaml(load_config("fmnist-mocov3", given)))
    (tmp_path / "summary.json").write_text(json.dumps({"completed": True, "device": "cpu", "precision": "fp32"}))
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    bench_cache.check_settings(tmp_path, "fmnist-mocov3", given)  # fp32 here too: reused
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    with pytest.raises(SystemExit, match="trained with fp32 on cpu; this machine runs bf16 on cpu"):
        bench_cache.check_settings(tmp_path, "fmnist-mocov3", given)
    with pytest.raises(SystemExit, match="trained with fp32 on cpu; this machine runs bf16 on cpu"):
        quality.pretrain(load_config("fmnist-mocov3", given), tmp_path, ["knn"])  # its cached results too


def test_the_cache_refuses_a_key_without_its_keyed_value(monkeypatch, tmp_path):
    keyed = json.loads(quality.KEYED_DEFAULTS.read_text())
    del keyed["train.lr"]
    (tmp_path / "keyed.json").write_text(json.dumps(keyed))
    monkeypatch.setattr(quality, "KEYED_DEFAULTS", tmp_path / "keyed.json")
    with pytest.raises(SystemExit, match="train.lr: not in keyed.json"):
        identity()


def test_bold_needs_three_seeds_of_one_sign_past_one_and_a_half_spreads():
    assert quality.bold([0.010, 0.012, 0.011])
    assert not quality.bold([0.010, 0.012])  # two seeds: never
    assert not quality.bold([0.010, 0.012, -0.001])  # a sign apart
    assert not quality.bold([0.001, 0.010, 0.020])  # mean 0.0103, sd 0.0095: within 1.5 sd
    assert quality.mean_std([0.5]) == "0.5000"  # one seed: no spread claimed


def search_file(path: Path, point: str, seeds: list[int], knn: list[float | None]) -> Path:
    table = "point  knn\nbase   0.7\n"  # the table quality.py prints before its JSON line
    result = {"benchmark": "quality-search", "method": "mocov3", "seeds": seeds, "overrides": [],
              "values": {point: {"knn": knn}}}
    path.write_text(table + json.dumps(result) + "\n")
    return path


def test_paired_differences_follow_the_seeds_both_files_hold(tmp_path, capsys, monkeypatch):
    a = search_file(tmp_path / "a.json", "base", [0, 1, 2], [0.75, 0.76, 0.74])
    b = search_file(tmp_path / "b.json", "init-mocov3", [2, 1, 0], [0.72, 0.75, 0.73])
    result = paired.paired(paired.by_seed(paired.last_json(a), "base", a),
                           paired.by_seed(paired.last_json(b), "init-mocov3", b))
    assert result["knn"]["seeds"] == [0, 1, 2]
    assert result["knn"]["diffs"] == pytest.approx([0.02, 0.01, 0.02])
    assert result["knn"]["mean"] == pytest.approx(0.05 / 3) and result["knn"]["bold"]
    c = search_file(tmp_path / "c.json", "base", [0, 1], [0.70, None])  # seed 1 not evaluated: left out
    assert paired.paired(paired.by_seed(paired.last_json(c), "base", c),
                         paired.by_seed(paired.last_json(a), "base", a))["knn"]["seeds"] == [0]
    for name, linear in (("d", [None, None, None]), ("e", [0.7, 0.7, 0.7])):  # linear: in neither seed of d
        f = search_file(tmp_path / f"{name}.json", "base", [0, 1, 2], [0.75, 0.76, 0.74])
        result = json.loads(f.read_text().splitlines()[-1])
        result["values"]["base"]["linear"] = linear
        f.write_text(json.dumps(result) + "\n")
    monkeypatch.setattr(sys, "argv", ["paired.py", str(tmp_path / "d.json"), str(tmp_path / "e.json")])
    paired.main()
    out = capsys.readouterr().out
    assert "linear   no seed in both" in out and "knn      +0.0000 ± 0.0000" in out


def test_paired_refuses_runs_evaluated_otherwise(tmp_path, monkeypatch, capsys):
    a = search_file(tmp_path / "a.json", "base", [0, 1, 2], [0.75, 0.76, 0.74])
    result = json.loads(a.read_text().splitlines()[-1])
    budget = ["eval.knn.test_subset=5000", "eval.linear.epochs=20"]
    (tmp_path / "a.json").write_text(json.dumps({**result, "eval_budget": budget}) + "\n")
    for other in ({"eval_budget": ["eval.knn_test_subset=5000", "eval.linear_epochs=20"]},  # 0.1.0's names
                  {"eval_budget": budget, "overrides": ["model.init=timm"]}):  # what the search changes
        (tmp_path / "b.json").write_text(json.dumps({**result, **other}) + "\n")
        monkeypatch.setattr(sys, "argv", ["paired.py", str(a), str(tmp_path / "b.json")])
        paired.main()
    for other in ({"eval_budget": ["eval.knn.test_subset=500", "eval.linear.epochs=20"]},
                  {"eval_budget": budget, "overrides": ["eval.linear.epochs=2"]}):
        (tmp_path / "b.json").write_text(json.dumps({**result, **other}) + "\n")
        monkeypatch.setattr(sys, "argv", ["paired.py", str(a), str(tmp_path / "b.json")])
        with pytest.raises(SystemExit, match="pair runs evaluated alike"):
            paired.main()


def test_paired_refuses_a_file_that_is_no_search_result(tmp_path):
    (tmp_path / "x.json").write_text('{"benchmark": "throughput"}\n')
    with pytest.raises(SystemExit, match="not a result of quality.py --search"):
        paired.last_json(tmp_path / "x.json")


def test_a_steps_fused_attention_counts_the_models_flops():
    """The CPU's fused attention has no formula in torch's counter, and its backward formula counts the scores
    the kernel computes again: counted as the model's FLOPs, the fused step's are the unfused step's (two
    products forward, four backward), on a query and key of other lengths too."""
    def fused(qkv):
        F.scaled_dot_product_attention(*qkv).sum().backward()

    def unfused(qkv):
        q, k, v = qkv
        (torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, -1) @ v).sum().backward()

    for query_length in (16, 5):
        qkv = (torch.randn(2, 3, query_length, 8, requires_grad=True),
               *(torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(2)))
        counted = kernel_kinds.flops_by_kind(fused, qkv)
        assert counted == {"attention": kernel_kinds.flops_by_kind(unfused, qkv)["matmul"]}


def test_a_pre_made_batch_crosses_to_the_device_once_and_a_pipeline_s_stock_is_taken_before_the_timer(
        monkeypatch):
    """throughput.py: the *-tensors step is the training step alone (its batch moved before the timer, not each
    step), with the stages data.device_stages leaves for the device (here the crops) run each step; a pipeline
    configuration's timed steps start with the loader's prefetched batches taken."""
    import itertools

    import throughput

    from conftest import TINY
    from repre.data.pipeline import PretrainData

    calls = []
    for name in ("move", "finish"):
        method = getattr(PretrainData, name)
        monkeypatch.setattr(PretrainData, name, lambda self, batch, name=name, method=method:
                            calls.append((name, "pixels" in batch)) or method(self, batch))
    trainer, step, batches = throughput.build("repre-tensors", "fmnist-mocov3-repre",
                                              [*TINY, "train.batch_size=8", "data.device_stages=crops"])
    for _ in range(3):
        step(next(batches))
    assert calls == [("move", True)] + [("finish", True)] * 3 and trainer.state.step == 3  # packed images
    taken = itertools.count()
    throughput._time_steps(lambda batch: None, (next(taken) for _ in itertools.repeat(None)), 2, 5, ready=4)
    assert next(taken) == 2 + 4 + 5


def test_the_collapse_replay_takes_the_lines_the_trainer_gave_its_callbacks():
    """A window's averages all finite: given to the callbacks, whatever its speed (null where no step was timed)
    and its diagnostics (null where not finite); a window whose loss is null (every step skipped): not."""
    import collapse_watch

    line = {"step": 8, "kind": "train", "loss": 1.0, "lr": 1e-3, "images_per_sec": None, "diag_grad_cosine": None}
    assert collapse_watch.finite(line)
    assert not collapse_watch.finite({**line, "loss": None})
