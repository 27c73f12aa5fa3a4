"""Never lose a run: exact resume after SIGKILL, safe and atomic checkpoints, divergence guards, --init-from."""

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BITWISE, DINO_TINY, SWIN_TINY, TINY, last_json, pretrain_args, run_cli, tiny_config
from repre.builder import build_model
from repre.core import checkpoint_io as ckpt_io
from repre.engine import guard as guard_mod
from repre.engine.guard import DeviceGuard, HostGuard
from repre.engine.signals import GracefulStop
from repre.engine.state import RunState
from repre.engine.trainer import Trainer
from repre.errors import StoppedEarly, UserError
from repre.methods.base import embedding_std
from repre.pretrained import encoder_state

RESUME = TINY + ["train.max_steps=40", "train.checkpoint_every=4", "train.log_every=4", "eval.knn.enabled=false",
                 "train.diagnose_every=0", "data.synthetic_train=128"]


def pretrain_cmd(out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "repre", "pretrain", "--out", str(out)]
    for item in RESUME + extra:
        cmd += ["--set", item]
    return cmd


def final_model(out: Path) -> dict:
    return ckpt_io.load(out / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("workers,method", [pytest.param(2, ["model.drop_path=0.1"], id="mocov3-2-workers-drop-path"),
                                            pytest.param(0, DINO_TINY, id="dino"),
                                            pytest.param(0, SWIN_TINY, id="moby")])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, workers, method):
    """A run killed with SIGKILL right after its step-4 checkpoint, then resumed, ends with exactly the
    weights and buffers (momentum encoders, DINO's center, MoBY's queues) of an uninterrupted run. Drop path
    draws from the global RNG and the augmentations from the workers' (the first case) or the main process's
    (the others), so the cases also check that every RNG stream resumes exactly. 16 steps of 8 an epoch: the
    resumed run crosses an epoch boundary, where the sampler and the workers' seeds start again."""
    # one thread each: the uninterrupted run trains alongside the killed one, a core each
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    extra = ["train.max_steps=16", f"train.num_workers={workers}", *method, *BITWISE]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with (tmp_path / "whole.log").open("w") as log:  # the child writes through its own copy of the handle
        uninterrupted = subprocess.Popen(pretrain_cmd(whole, extra), env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        proc = subprocess.Popen(pretrain_cmd(killed, extra), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not (killed / "checkpoints" / "step-00000004.pt.sha256").exists() and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
        done = subprocess.run(pretrain_cmd(killed, extra) + ["--resume"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "resuming from" in done.stderr
        assert uninterrupted.wait() == 0, (tmp_path / "whole.log").read_text()
    finally:
        uninterrupted.kill()  # a failure above leaves no run training on
        uninterrupted.wait()
    a, b = final_model(whole), final_model(killed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_damaged_newest_checkpoint_is_detected_and_the_previous_used(tmp_path, repre_log):
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out)]
    for item in RESUME + ["train.max_steps=8", "train.num_workers=0"]:
        args += ["--set", item]
    assert run_cli(args)[0] == 0
    newest = out / "checkpoints" / "step-00000008.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data: torch.load alone would not notice
    newest.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged.*its run has step-00000004.pt in"):  # what to use instead
        ckpt_io.load(newest)
    with pytest.raises(UserError, match="last.pt is damaged.*its run has step-00000004.pt in") as raised:
        ckpt_io.load(out)  # what `repre eval RUN` reads: last.pt, the damaged file's other name, is not advised
    assert "step-00000008" not in str(raised.value)
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=8", "train.num_workers=0"), out, resume=True)
    assert trainer.state.step == 4
    assert "skipping unreadable checkpoint" in repre_log.text and "damaged" in repre_log.text
    assert not newest.exists() and newest.with_name(newest.name + ".damaged").exists()  # out of pruning's way
    last = out / "checkpoints" / "last.pt"  # was the damaged file's other name; now the one resumed from
    assert os.path.samefile(last, out / "checkpoints" / "step-00000004.pt")
    ckpt_io.verify(last)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step-00000004.pt").write_bytes(b"garbage")
    (out / "checkpoints" / ".step-00000008.pt.tmp").write_bytes(b"half a checkpoint")  # a SIGKILL mid-write
    with pytest.raises(UserError, match="could be read"):
        Trainer(tiny_config(*RESUME, "train.num_workers=0"), out, resume=True)
    assert not (out / "checkpoints" / ".step-00000008.pt.tmp").exists()


def write_in_child(path: Path, limit: int) -> int:
    """Save a ~4 MB checkpoint to `path` in a child process whose files may not exceed `limit` bytes
    (RLIMIT_FSIZE, as a full disk); returns the child's exit status: 0 written, 7 the write failed with the
    OSError the trainer catches (an uncaught exception of another type exits 1)."""
    code = f"""
import resource, signal, sys, torch
from pathlib import Path
from repre.core import checkpoint_io as ckpt_io
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    ckpt_io.save({{"schema": 1, "model": {{"w": torch.ones(1 << 20)}}, "config": {{}}}}, Path({str(path)!r}))
except OSError:  # what the trainer catches: torch's own RuntimeError must have been converted
    sys.exit(7)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode


def test_full_disk_leaves_the_previous_checkpoint_valid(tmp_path):
    path = tmp_path / "checkpoints" / "step-00000001.pt"
    assert write_in_child(path, resource.RLIM_INFINITY) == 0
    before = path.read_bytes()
    assert write_in_child(path, 1 << 20) == 7  # 4 MB do not fit in 1 MB
    assert path.read_bytes() == before
    ckpt_io.verify(path)  # still matches its checksum
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-00000001.pt", "step-00000001.pt.sha256"]


def test_last_pt_is_the_newest_step_file_stored_once(tmp_path, monkeypatch):
    """last.pt is a hard link to the newest step file (its bytes on disk once, kept when that file is pruned);
    where the filesystem has no hard links, an atomic copy with the same checksum."""
    folder = tmp_path / "checkpoints"
    first, second, last = folder / "step-00000001.pt", folder / "step-00000002.pt", folder / "last.pt"
    for i, path in enumerate((first, second)):
        ckpt_io.save({"schema": 1, "model": {"w": torch.full((4,), float(i))}, "config": {}}, path)
        ckpt_io.link_atomic(path, last)
    ckpt_io.link_atomic(second, last)  # again, onto a name that is already the same file
    assert os.path.samefile(second, last) and last.stat().st_nlink == 2
    second.unlink(), second.with_name(second.name + ".sha256").unlink()  # pruned
    ckpt_io.verify(last)
    assert torch.equal(ckpt_io.load(last)["model"]["w"], torch.ones(4))

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    ckpt_io.link_atomic(first, last)
    assert not os.path.samefile(first, last) and last.read_bytes() == first.read_bytes()
    ckpt_io.verify(last)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "last.pt.sha256", "step-00000001.pt",
                                                       "step-00000001.pt.sha256"]


def test_a_failed_periodic_write_does_not_stop_training(tmp_path, monkeypatch, repre_log):
    real_save, calls = ckpt_io.save, []

    def flaky_save(state, path):
        calls.append(path.name)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(ckpt_io, "save", flaky_save)
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=8", "train.num_workers=0"), tmp_path / "run")
    summary = trainer.fit()
    assert summary["completed"] and calls == ["step-00000004.pt", "step-00000008.pt"]
    assert "could not write checkpoint" in repre_log.text and "No space left" in repre_log.text


def test_milestones_survive_pruning(tmp_path):
    cfg = tiny_config(*RESUME, "train.max_steps=16", "train.keep_checkpoints=1", "train.milestone_every=8",
                      "train.num_workers=0")
    Trainer(cfg, tmp_path / "run").fit()
    names = sorted(p.name for p in ckpt_io.step_checkpoints(tmp_path / "run"))
    assert names == ["step-00000008.pt", "step-00000016.pt"]  # 4 and 12 pruned, milestone 8 kept


def test_a_checkpoint_carrying_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"schema": 1, "model": {}, "config": {}, "x": Payload()}, fh, protocol=2)
    with pytest.raises(UserError, match="could run code"):
        ckpt_io.load(path)
    assert not (tmp_path / "pwned").exists()


def test_incompatible_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"schema": 99, "model": {}, "config": {}}, path)
    with pytest.raises(UserError, match="schema 99"):
        ckpt_io.load(path)


def test_checkpoint_records_versions_and_schema(tiny_run):
    out, _ = tiny_run
    ckpt = ckpt_io.load(out)
    assert ckpt["schema"] == ckpt_io.SCHEMA and set(ckpt["versions"]) >= {"repre", "torch", "timm", "git"}


def test_the_recorded_commit_says_whether_the_tree_differs_from_it(tmp_path):
    """A commit alone claimed the code of a tree with uncommitted changes."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git")
    assert ckpt_io.git_state(tmp_path) == (None, None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "a.py").write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "a.py"], ["commit", "-qm", "a"]):
        subprocess.run(git + args, cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "sub").mkdir()
    commit, modified = ckpt_io.git_state(tmp_path / "sub")
    assert len(commit) == 40 and modified is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert ckpt_io.git_state(tmp_path / "sub") == (commit, True)


def poison(trainer: Trainer, steps: set[int]) -> dict[int, dict[str, torch.Tensor]]:
    """Make the loss NaN at these (0-based) steps; returns the online encoder's weights before each step."""
    forward, train_step, before = trainer.model.forward, trainer.train_step, {}

    def sometimes_nan(*args, **kw):
        out = forward(*args, **kw)
        if trainer.state.step in steps:
            out["loss"] = out["loss"] * float("nan")
        return out

    def snapshot_then_step(batch):
        before[trainer.state.step] = {k: v.clone() for k, v in trainer.model.method.encoder.state_dict().items()}
        return train_step(batch)

    trainer.model.forward, trainer.train_step = sometimes_nan, snapshot_then_step
    return before


def test_non_finite_steps_are_skipped_and_a_streak_stops_with_status_3(tmp_path, repre_log):
    cfg = tiny_config(*RESUME, "train.max_steps=12", "train.max_bad_steps=3", "train.num_workers=0",
                      "train.host_sync=step")  # decided each step (a GPU's default, log, is the test below)
    trainer = Trainer(cfg, tmp_path / "run")
    before = poison(trainer, {2, 5, 6, 7})  # 0-based steps; 5, 6, 7 in a row
    with pytest.raises(StoppedEarly) as stop:
        trainer.fit()
    summary = stop.value.summary  # the message: the same as JSON (what `repre pretrain` prints)
    assert summary == __import__("json").loads(str(stop.value))
    assert not summary["completed"] and summary["nonfinite_steps"] == 4 and summary["steps"] == 8  # 6, 7, 8 (1-based)
    after = trainer.model.method.encoder.state_dict()
    assert all(torch.equal(after[k], before[5][k]) for k in after)  # steps 5, 6, 7 left the weights alone
    assert all(torch.equal(before[3][k], before[2][k]) for k in after)  # skipped step 2 changed nothing
    assert not all(torch.equal(before[4][k], before[3][k]) for k in after)  # a good step after it trained
    assert summary["checkpoint"].endswith("step-00000004.pt")  # the last good one; nothing written after
    assert "3 non-finite steps in a row" in repre_log.text and "lower train.lr" in repre_log.text
    assert "instead of fp16" not in repre_log.text  # an fp32 run: no advice on fp16
    assert f"--config {trainer.out / 'config.yaml'} --init-from " in repre_log.text  # the run's own model, not a preset
    lines = [__import__("json").loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_step"]) for r in lines if r["kind"] == "train"] == [(4, 0.25), (8, 0.75)]


@pytest.mark.parametrize("host_sync", ["step", "log"])
def test_a_run_stopped_within_a_streak_of_skipped_steps_resumes_counting_it(tmp_path, host_sync):
    """Ctrl-C after two non-finite steps in a row (max_bad_steps 3): the final checkpoint keeps the streak, so
    a third one after --resume stops the run where the uninterrupted run stops (the host strategy after the
    step, the device strategy at its next sync point, its counters started from the checkpoint's)."""
    settings = [*RESUME, "train.max_steps=12", "train.max_bad_steps=3", "train.num_workers=0",
                f"train.host_sync={host_sync}"]
    uninterrupted = Trainer(tiny_config(*settings), tmp_path / "uninterrupted")
    poison(uninterrupted, {4, 5, 6})
    with pytest.raises(StoppedEarly) as stop:
        uninterrupted.fit()
    expected = __import__("json").loads(str(stop.value))
    trainer = Trainer(tiny_config(*settings), tmp_path / "run")
    poison(trainer, {4, 5})
    step = trainer.train_step

    def interrupt_after_step_6(batch):
        out = step(batch)
        if trainer.state.step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: stop at the step's end, with a checkpoint
        return out

    trainer.train_step = interrupt_after_step_6
    with pytest.raises(StoppedEarly):
        trainer.fit()
    resumed = Trainer(tiny_config(*settings), tmp_path / "run", resume=True)
    assert resumed.state.step == 6 and resumed.state.bad_streak == 2
    poison(resumed, {6})
    with pytest.raises(StoppedEarly) as stop:
        resumed.fit()
    summary = __import__("json").loads(str(stop.value))
    assert (summary["steps"], summary["nonfinite_steps"]) == (expected["steps"], 3) and not summary["completed"]


def test_divergence_exits_3_through_the_cli(tmp_path, monkeypatch):
    from repre.engine import trainer as trainer_mod

    def nan_step(self, batch):
        self.state.nonfinite_steps += 1
        self.state.bad_streak += 1
        return {"loss": torch.tensor(float("nan"))}

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", nan_step)
    args = ["pretrain", "--out", str(tmp_path / "run")]
    for item in RESUME + ["train.max_bad_steps=2", "train.num_workers=0"]:
        args += ["--set", item]
    code, stdout = run_cli(args)
    assert code == 3 and last_json(stdout)["completed"] is False and last_json(stdout)["diverged"] is True


def test_collapse_monitor():
    torch.manual_seed(0)
    assert float(embedding_std(torch.randn(512, 64))) == pytest.approx(1.0, abs=0.05)
    assert float(embedding_std(torch.randn(1, 64).expand(512, 64) + 1e-4 * torch.randn(512, 64))) < 0.01


def test_collapse_warning_is_logged(tmp_path, repre_log, monkeypatch):
    from repre.methods import base

    monkeypatch.setattr(base, "embedding_std", lambda z: torch.tensor(0.01))
    # train lines at steps 4 and 8: a sign that lasts two lines
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=8", "train.num_workers=0"), tmp_path / "run")
    trainer.fit()
    assert "collapsing" in repre_log.text


def test_a_resumed_run_warns_of_collapse_as_the_uninterrupted_one(tmp_path, repre_log, monkeypatch):
    """The collapse watch's lines are in the checkpoint: a run stopped (Ctrl-C) after the first line with a
    sign and resumed warns at step 8, as the uninterrupted run does (it counted one line, and never warned)."""
    from repre.engine import trainer as trainer_mod
    from repre.methods import base

    monkeypatch.setattr(base, "embedding_std", lambda z: torch.tensor(0.01))
    settings = [*RESUME, "train.num_workers=0", "train.max_steps=8"]  # train lines at steps 4 and 8
    Trainer(tiny_config(*settings), tmp_path / "whole").fit()
    whole = [r.getMessage() for r in repre_log.records if "collapsing" in r.getMessage()]
    repre_log.clear()
    original, asked = trainer_mod.Trainer.train_step, []

    def interrupt_once(self, batch):
        out = original(self, batch)
        if self.state.step == 4 and not asked:
            asked.append(self.state.step)
            os.kill(os.getpid(), signal.SIGINT)  # the run stops after its next step, at step 5
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupt_once)
    with pytest.raises(StoppedEarly):
        Trainer(tiny_config(*settings), tmp_path / "run").fit()
    assert ckpt_io.load(tmp_path / "run")["monitors"]["CollapseWatch"]["recent"] == [True]
    assert Trainer(tiny_config(*settings), tmp_path / "run", resume=True).fit()["completed"]
    resumed = [r.getMessage() for r in repre_log.records if "collapsing" in r.getMessage()]
    assert len(whole) == 1 and resumed == whole and whole[0].startswith("step 8: ")


def test_a_run_stopped_between_train_lines_resumes_to_the_uninterrupted_lines(tmp_path, monkeypatch):
    """Stopped (Ctrl-C) at step 5, between the lines of steps 4 and 8, after the loss-balance measurement of
    step 5: the resumed run's line at step 8 averages steps 5 to 8 and carries that measurement, as the
    uninterrupted run's does; every line is the same but for its timing."""
    import json
    import shutil

    from repre.engine import trainer as trainer_mod

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=8", "train.diagnose_every=5"]

    def lines(out: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_sec"}
                for x in (out / "metrics.jsonl").read_text().splitlines()]

    Trainer(tiny_config(*settings), tmp_path / "whole").fit()
    original, asked = trainer_mod.Trainer.train_step, []

    def interrupt_once(self, batch):
        out = original(self, batch)
        if self.state.step == 4 and not asked:
            asked.append(self.state.step)
            os.kill(os.getpid(), signal.SIGINT)  # the run stops after this step, at step 5
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupt_once)
    with pytest.raises(StoppedEarly):
        Trainer(tiny_config(*settings), tmp_path / "run").fit()
    ckpt = ckpt_io.load(tmp_path / "run")
    assert ckpt["step"] == 5 and ckpt["window"]["ranks"][0]["loss"][1] == 1.0  # one step of the next line
    assert "diag_grad_cosine" in ckpt["monitors"]["LossBalance"]["pending"]
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", original)
    shutil.copytree(tmp_path / "run", tmp_path / "short")
    assert Trainer(tiny_config(*settings), tmp_path / "run", resume=True).fit()["completed"]
    whole, resumed = lines(tmp_path / "whole"), lines(tmp_path / "run")
    assert [r["step"] for r in whole] == [4, 8] and "diag_grad_cosine" in whole[1]
    assert resumed == whole
    # resumed at its new total, step 5: no step runs, and the carried step is the last line
    assert Trainer(tiny_config(*settings, "train.max_steps=5"), tmp_path / "short", resume=True).fit()["completed"]
    last = json.loads((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 5 and last["images_per_sec"] is None
    assert last["loss"] == pytest.approx(ckpt["window"]["ranks"][0]["loss"][0])  # the one step's loss


def test_a_run_that_failed_in_the_k_nn_of_a_checkpoint_step_resumes_to_the_uninterrupted_lines(tmp_path, monkeypatch):
    """The k-NN of a step that also checkpoints runs before the checkpoint: a run lost during it (here an error)
    resumes from the checkpoint before and writes that k-NN's line, as the uninterrupted run; TensorBoard holds
    each step's values once."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from repre.eval.callbacks import PeriodicKNN
    from repre.pretraining import pretrain

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=6", "train.checkpoint_every=2", "train.log_every=2",
                "train.eval_every=4", "eval.knn.enabled=true"]

    def lines(out: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_sec"}
                for x in (out / "metrics.jsonl").read_text().splitlines()]

    pretrain(tiny_config(*settings), tmp_path / "whole")
    original = PeriodicKNN.on_step_end

    def lost_in_the_k_nn(self, trainer, writer):
        if trainer.state.step == 4:
            raise RuntimeError("the machine is gone")
        original(self, trainer, writer)

    monkeypatch.setattr(PeriodicKNN, "on_step_end", lost_in_the_k_nn)
    with pytest.raises(RuntimeError):
        pretrain(tiny_config(*settings), tmp_path / "run")
    assert ckpt_io.load(tmp_path / "run")["step"] == 2
    monkeypatch.setattr(PeriodicKNN, "on_step_end", original)
    pretrain(tiny_config(*settings), tmp_path / "run", resume=True)
    whole, resumed = lines(tmp_path / "whole"), lines(tmp_path / "run")
    assert [(r["step"], r["kind"]) for r in whole] == [(2, "train"), (4, "train"), (4, "eval"), (6, "train"),
                                                       (6, "eval")]
    assert resumed == whole
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("train/loss")) == [2, 4, 6]
    assert sorted(e.step for e in events.Scalars("eval/knn_top1_quick")) == [4]  # on the quick subsets
    assert sorted(e.step for e in events.Scalars("eval/knn_top1")) == [6]  # the final one


def test_a_run_lost_after_its_final_k_nn_writes_it_once_when_resumed(tmp_path):
    """Lost between its final k-NN and summary.json, a resumed run redoes its end: one final eval line. Requeued
    once more after it completed, it redoes nothing and keeps that line."""
    import json

    from repre.pretraining import pretrain

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=4", "eval.knn.enabled=true"]
    pretrain(tiny_config(*settings), tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    summary = pretrain(tiny_config(*settings), tmp_path / "run", resume=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in lines] == [(4, "train"), (4, "eval")]
    assert lines[-1]["knn_top1"] == summary["knn_top1"]
    assert pretrain(tiny_config(*settings), tmp_path / "run", resume=True) == summary
    again = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert again == lines
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()  # the end redone is drawn once (its k-NN and reconstructions were there twice)
    assert [e.step for e in events.Scalars("eval/knn_top1")] == [4]
    assert [e.step for e in events.Scalars("train/loss")] == [4]  # the kept train line, drawn again
    assert [e.step for e in events.Images("recon")] == [4]


def test_a_signal_during_the_final_k_nn_stops_it_and_resume_redoes_it(tmp_path, monkeypatch):
    """A scheduler's SIGTERM during the final evaluations (minutes on ImageNet, longer than its grace period)
    leaves them at once: summary.json says "completed": false (what a requeue reads), and --resume redoes them
    alone, as the uninterrupted run's end."""
    import json

    import repre.eval.callbacks as callbacks_mod
    from repre.pretraining import pretrain

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("not interrupted")

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=4", "eval.knn.enabled=true"]
    with monkeypatch.context() as patched:
        patched.setattr(callbacks_mod, "knn_eval", signalled)
        with pytest.raises(StoppedEarly) as stop:
            pretrain(tiny_config(*settings), tmp_path / "run")
    assert stop.value.summary["completed"] is False and stop.value.summary["steps"] == 4
    assert stop.value.summary["knn_top1"] is None  # no final evaluation's value in a run that is not complete
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["completed"] is False
    from repre.engine.trainer import Trainer

    with monkeypatch.context() as patched:  # the evaluations alone: no step trained again
        patched.setattr(Trainer, "train_step", lambda *args: pytest.fail("a step trained again"))
        summary = pretrain(tiny_config(*settings), tmp_path / "run", resume=True)
    assert summary["completed"] and summary["knn_top1"] is not None
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in lines] == [(4, "train"), (4, "eval")]


def test_a_signal_while_the_run_builds_stops_it_before_its_first_step(tmp_path, monkeypatch):
    """A scheduler's SIGTERM while a run indexes its images or builds its model killed it without a summary (no
    requeue): it stops before the first step, as a signal during the loop stops it, and resumes."""
    import repre.engine.trainer as trainer_mod
    from repre.pretraining import pretrain

    built = trainer_mod.PretrainData

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return built(*args, **kwargs)

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=4"]
    with monkeypatch.context() as patched:
        patched.setattr(trainer_mod, "PretrainData", signalled)
        with pytest.raises(StoppedEarly) as stop:
            pretrain(tiny_config(*settings), tmp_path / "run")
    assert stop.value.summary["completed"] is False and stop.value.summary["steps"] == 0
    assert pretrain(tiny_config(*settings), tmp_path / "run", resume=True)["steps"] == 4


def test_a_run_folder_without_its_config_resumes_with_its_checkpoint_s(tmp_path, repre_log):
    """A copy of checkpoints/ alone (config.yaml lost): `--resume` trained the default preset (800 steps), or
    refused the run's own --set as "a config that differs"."""
    from repre.cli import main

    run = tmp_path / "run"
    argv = ["pretrain", "--out", str(run)]
    for item in [*RESUME, "train.num_workers=0", "train.max_steps=4", "train.checkpoint_every=2"]:
        argv += ["--set", item]
    assert main(argv) == 0
    for name in ("step-00000004.pt", "step-00000004.pt.sha256", "last.pt"):
        (run / "checkpoints" / name).unlink()  # stopped after step 2
    (run / "config.yaml").unlink()
    assert main(["pretrain", "--out", str(run), "--resume"]) == 0
    assert f"{run} has no config.yaml: resuming with the config its checkpoint step-00000002.pt holds" in \
        repre_log.text
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 4


def test_a_run_whose_checkpoints_hold_last_pt_alone_resumes_from_it(tmp_path, repre_log):
    """A copy of the newest checkpoint alone (last.pt, no step file it is): --resume goes on from its step (it
    started afresh and wrote over it)."""
    import shutil

    from repre.pretraining import pretrain

    run = tmp_path / "run"
    pretrain(tiny_config(*RESUME, "train.num_workers=0", "train.max_steps=4", "train.checkpoint_every=4"), run)
    folder = run / "checkpoints"
    copied = tmp_path / "last.pt"
    shutil.copy(folder / "last.pt", copied)
    shutil.rmtree(folder)
    folder.mkdir()
    shutil.copy(copied, folder / "last.pt")  # no sidecar, no step file
    pretrain(tiny_config(*RESUME, "train.num_workers=0", "train.max_steps=6", "train.checkpoint_every=4"), run,
             resume=True)
    assert f"resuming from {folder / 'last.pt'} (step 4 of 6)" in repre_log.text
    assert torch.load(folder / "last.pt", weights_only=False)["step"] == 6


def test_a_last_pt_newer_than_every_step_file_is_resumed_from(tmp_path, repre_log):
    """last.pt whose own step file was removed since (by hand, a tidy-up script): the resume went on from the
    older step file before it, redoing the steps between without a word."""
    from repre.pretraining import pretrain

    run = tmp_path / "run"
    pretrain(tiny_config(*RESUME, "train.num_workers=0", "train.max_steps=8", "train.checkpoint_every=4"), run)
    folder = run / "checkpoints"
    (folder / "step-00000008.pt").unlink()
    pretrain(tiny_config(*RESUME, "train.num_workers=0", "train.max_steps=10", "train.checkpoint_every=4"), run,
             resume=True)
    assert f"resuming from {folder / 'last.pt'} (step 8 of 10)" in repre_log.text


def test_a_run_resumed_before_its_first_checkpoint_draws_each_step_once_in_tensorboard(tmp_path):
    """Lost before its first checkpoint, a run resumed with --resume starts again at step 0: metrics.jsonl
    and TensorBoard drop what the lost run wrote."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = [*RESUME, "train.num_workers=0", "train.max_steps=4", "train.log_every=1"]
    Trainer(tiny_config(*settings), tmp_path / "run").fit()
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "summary.json").unlink()
    Trainer(tiny_config(*settings), tmp_path / "run", resume=True).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_moved_dataset_resumes_where_it_holds_the_run_s_images(tmp_path, image_folder, repre_log):
    """data.root may change on resume (the dataset moved to a faster disk): the run goes on, and says where it
    reads; a root with another number of training images is refused (it is other data)."""
    import shutil

    settings = [*RESUME, "data.name=folder", "train.batch_size=8", "train.max_steps=4", "train.num_workers=0"]
    Trainer(tiny_config(*settings, f"data.root={image_folder}", "train.max_steps=2"), tmp_path / "run").fit()
    moved = shutil.copytree(image_folder, tmp_path / "fast" / "imgs")
    trainer = Trainer(tiny_config(*settings, f"data.root={moved}"), tmp_path / "run", resume=True)
    assert trainer.state.step == 2 and f"resuming with data.root {moved} (the run trained on {image_folder})" in \
        repre_log.text and "(24, as before)" in repre_log.text
    (moved / "train" / "cat" / "0.png").unlink()
    with pytest.raises(UserError, match=r"holds 23 training images, the run trained on 24"):
        Trainer(tiny_config(*settings, f"data.root={moved}"), tmp_path / "run", resume=True)
    (image_folder / "train" / "cat" / "0.png").unlink()  # the run's own folder, an image taken away: said
    Trainer(tiny_config(*settings, f"data.root={image_folder}"), tmp_path / "run", resume=True)
    assert f"data.root {image_folder} holds 23 training images, the run trained on 24 there" in repre_log.text


def test_a_moved_dataset_s_warning_names_the_default_folder_it_read():
    """A run of Fashion-MNIST at its default location, resumed with data.root given: "(the run trained on
    None)"."""
    from repre.config import DataConfig
    from repre.data.sources import root_named

    assert root_named(DataConfig(name="fashion-mnist")) == "/usr/share/datasets/fashion-mnist"
    assert root_named(DataConfig(name="fashion-mnist", root="/x")) == "/x" and root_named(DataConfig()) is not None


def test_out_of_memory_is_answered_with_what_to_change(tmp_path, monkeypatch, capsys):
    from repre import pretraining

    def oom(*args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pretraining, "pretrain", oom)
    code, _ = run_cli(["pretrain", "--out", str(tmp_path / "run"), "--set", "data.name=synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "out of memory" in err and "train.batch_size" in err and "--init-from" in err
    import repre.eval

    monkeypatch.setattr(repre.eval, "evaluate", oom)
    code, _ = run_cli(["eval", "finetune", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "eval.finetune.batch_size (finetune)" in err and "--resume" not in err

    def host_oom(*args, **kw):  # what the CPU's allocator raises (a RuntimeError, no MemoryError)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 800000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(pretraining, "pretrain", host_oom)
    code, _ = run_cli(["pretrain", "--out", str(tmp_path / "run"), "--set", "data.name=synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "repre: error: out of the machine's memory" in err and "train.num_workers" in err
    assert "more processes" not in err  # on one machine they would need more of its memory
    monkeypatch.setattr(repre.eval, "evaluate", host_oom)
    code, _ = run_cli(["eval", "finetune", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "(the machine's memory ran out)" in err and "train.device=cpu" not in err


def test_a_run_longer_than_its_schedules_fit_in_memory_is_refused_at_once():
    """Every per-step value is precomputed: 10^11 steps asked for 800 GB (a traceback), 10^22 overflowed."""
    from repre.core.schedules import total_steps

    for steps in ("100000000000", "9999999999999999999999"):
        with pytest.raises(UserError, match=r"train.max_steps must be in \[0, 100,000,000\]"):
            tiny_config(f"train.max_steps={steps}")
    with pytest.raises(UserError, match=r"train.epochs=10000000 of 1,281,167 images in batches of 256 is "
                                        r"50,040,000,000 steps, more than the 100,000,000 a run may take"):
        total_steps(tiny_config("train.max_steps=0", "train.epochs=10000000", "train.batch_size=256").train, 1_281_167)


def test_init_from_starts_from_another_runs_weights(tmp_path, tiny_run, repre_log):
    source, _ = tiny_run
    trainer = Trainer(tiny_config("recon.enabled=false"), tmp_path / "cont", init_from=source)
    want = encoder_state(ckpt_io.load(source))
    got = trainer.model.method.encoder.model.state_dict()
    assert all(torch.equal(got[k].cpu(), want[k].cpu()) for k in want)
    assert trainer.state.step == 0 and "initialised from" in repre_log.text
    assert "0 new here (-)" in repre_log.text and "not used (decoder)" in repre_log.text  # the modules, by name


def test_a_run_started_from_another_records_it_in_its_checkpoints_and_export(tmp_path, tiny_run):
    """The run, a resume of it and its export name the checkpoint it started from (its file, digest and step):
    nothing did, so an export's card counted 4 steps for an encoder of 24."""
    source, _ = tiny_run
    args = pretrain_args(tmp_path / "cont", "train.max_steps=4", "train.eval_every=0")
    assert run_cli([*args, "--init-from", str(source)])[0] == 0
    step_file = source / "checkpoints" / "step-00000020.pt"  # what last.pt names: a training run replaces last.pt
    want = {"checkpoint": str(step_file.resolve()), "sha256": ckpt_io.digest(step_file), "step": 20}
    assert ckpt_io.load(tmp_path / "cont")["init_from"] == want
    longer = [a if a != "train.max_steps=4" else "train.max_steps=6" for a in args]
    assert run_cli([*longer, "--resume"])[0] == 0
    assert ckpt_io.load(tmp_path / "cont")["init_from"] == want
    assert run_cli(["export", "--checkpoint", str(tmp_path / "cont"), "--out", str(tmp_path / "e.safetensors")])[0] == 0
    card = json.loads((tmp_path / "e.json").read_text())  # the file's name, as `checkpoint`: no path of the machine
    assert card["init_from"] == {**want, "checkpoint": "step-00000020.pt"} and card["step"] == 6


def test_init_from_another_method_starts_its_teacher_as_the_loaded_student(tmp_path, tiny_run):
    """A MoCo v3 run continued as DINO: the teacher (what DINO evaluates and exports) is the loaded encoder, not
    the random one it was built as; a run of the same method takes its momentum encoder from the checkpoint."""
    source, _ = tiny_run
    dino = Trainer(tiny_config(*DINO_TINY), tmp_path / "dino", init_from=source).model.method
    loaded = encoder_state(ckpt_io.load(source))
    for module in (dino.encoder, dino.teacher_encoder):
        assert all(torch.equal(module.model.state_dict()[k].cpu(), loaded[k].cpu()) for k in loaded)
    same = Trainer(tiny_config(), tmp_path / "same", init_from=source).model.method
    momentum = encoder_state(ckpt_io.load(source), "momentum_encoder")
    assert all(torch.equal(same.momentum_encoder.model.state_dict()[k].cpu(), momentum[k].cpu()) for k in momentum)


def test_init_from_a_dino_run_starts_another_method_from_its_teacher(tmp_path, repre_log):
    """DINO evaluates and exports its teacher: a MoCo v3 run continued from a DINO run starts its encoder and
    momentum encoder from that teacher, not from the student."""
    dino = Trainer(tiny_config(*DINO_TINY, "train.max_steps=2", "eval.knn.enabled=false"), tmp_path / "dino")
    dino.fit()
    state = ckpt_io.load(tmp_path / "dino")
    teacher, student = encoder_state(state, "teacher_encoder"), encoder_state(state)
    assert not all(torch.equal(teacher[k], student[k]) for k in teacher)
    method = Trainer(tiny_config(), tmp_path / "moco", init_from=tmp_path / "dino").model.method
    for module in (method.encoder, method.momentum_encoder):
        assert all(torch.equal(module.model.state_dict()[k].cpu(), teacher[k].cpu()) for k in teacher)
    assert "the encoder starts from its teacher_encoder (the encoder dino evaluates" in repre_log.text


def test_init_from_a_different_model_is_refused_naming_what_differs(tmp_path, tiny_run):
    """Another width at another size: the kwarg is named, not the size (the position embedding would be
    resampled); another depth, whose weights would load in part (blocks left at random), is refused too."""
    source, _ = tiny_run
    with pytest.raises(UserError, match="model.kwargs differ: embed_dim 32 there, 48 here: size mismatch"):
        Trainer(tiny_config("data.image_size=24",
                            "model.kwargs={patch_size: 4, embed_dim: 48, depth: 4, num_heads: 2}"),
                tmp_path / "x", init_from=source)
    assert not (tmp_path / "x").exists()  # refused before --out is made
    with pytest.raises(UserError, match=r"method settings differ: method.mocov3.proj_dim 32 there, 16 here: size "):
        Trainer(tiny_config("method.mocov3.proj_dim=16", "model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, "
                            "num_heads: 2, attn_drop_rate: 0.1}"), tmp_path / "x", init_from=source)
    with pytest.raises(UserError, match=r"recon settings differ: recon.width 16 there, 8 here: size mismatch for "
                       r"branch.decoder.*use the same recon.\* settings"):  # it blamed the method's settings
        Trainer(tiny_config("recon.width=8"), tmp_path / "x", init_from=source)
    with pytest.raises(UserError, match=r"model.kwargs differ: mlp_ratio unset \(the architecture's own\) there, 2 "
                       "here: size mismatch"):  # it said "None there"
        Trainer(tiny_config("model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2, mlp_ratio: 2}"),
                tmp_path / "x", init_from=source)
    for depth in (2, 6):
        with pytest.raises(UserError, match=f"its encoder is not this run's .model.kwargs differ: depth 4 there, "
                           f"{depth} here: 24 encoder tensors are in one of the two alone, "
                           f"model.blocks.{min(depth, 4)}\\."):
            Trainer(tiny_config(f"model.kwargs={{patch_size: 4, embed_dim: 32, depth: {depth}, num_heads: 2}}",
                                "recon.taps=2"), tmp_path / "x", init_from=source)


@pytest.mark.parametrize("init", ["timm", "dino", "mocov3"])
def test_init_from_a_run_at_another_image_size_resamples_its_position_embedding(tmp_path, tiny_run, init, repre_log):
    """Continued pre-training at a larger size (16 -> 24 px: a 4x4 -> 6x6 patch grid): the position embedding of
    each encoder (the momentum one's too) is resampled as the encoder's init resamples it (timm's bicubic,
    DINO's), or is this run's own fixed sin-cos (MoCo v3's); every other weight is the run's."""
    from timm.layers import resample_abs_pos_embed

    from repre.models.dino_vit import dino_resample

    source, _ = tiny_run
    trainer = Trainer(tiny_config("data.image_size=24", f"model.init={init}"), tmp_path / "big", init_from=source)
    want, got = encoder_state(ckpt_io.load(source)), trainer.model.method.encoder.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if k != "pos_embed")
    expected = {"timm": lambda p: resample_abs_pos_embed(p, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1),
                "dino": lambda p: dino_resample(p, (6, 6), (4, 4)),
                "mocov3": lambda _: Trainer(tiny_config("data.image_size=24", "model.init=mocov3"),
                                            tmp_path / "fresh").model.method.encoder.model.pos_embed}[init]
    torch.testing.assert_close(got["pos_embed"], expected(want["pos_embed"]))
    momentum = encoder_state(ckpt_io.load(source), "momentum_encoder")["pos_embed"]
    torch.testing.assert_close(trainer.model.method.momentum_encoder.model.pos_embed, expected(momentum))
    assert "position embeddings resampled to this run's 24" in repre_log.text


def test_init_from_nothing_is_refused_before_out_is_made(tmp_path):
    with pytest.raises(UserError, match="no checkpoint there"):
        Trainer(tiny_config(), tmp_path / "x", init_from=tmp_path / "nope")
    assert not (tmp_path / "x").exists()


def test_an_export_or_a_cut_copy_given_as_a_checkpoint_is_named_so(tmp_path, tiny_run):
    from safetensors.torch import save_file

    source, _ = tiny_run
    save_file({"w": torch.zeros(1)}, str(tmp_path / "vit.safetensors"))
    with pytest.raises(UserError, match="vit.safetensors is a safetensors file .a `repre export` holds the encoder"):
        ckpt_io.load(tmp_path / "vit.safetensors")
    whole = (source / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "copy.pt").write_bytes(whole[: len(whole) // 2])  # outside a run: no checksum beside it
    with pytest.raises(UserError, match="copy.pt is not a readable repre checkpoint: it is cut short or damaged"):
        ckpt_io.load(tmp_path / "copy.pt")


def test_first_ctrl_c_checkpoints_a_second_quits_at_once(tmp_path, monkeypatch, capsys):
    """SIGINT once: the run stops at the step boundary with a checkpoint (status 3); twice: it quits at once
    (KeyboardInterrupt, status 3 from the CLI) without waiting for the step to end."""
    from repre.engine import trainer as trainer_mod

    original = trainer_mod.Trainer.train_step

    at = 1

    def interrupt(self, batch):
        out = original(self, batch)
        if self.state.step == at:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupt)
    args = ["pretrain", "--out", str(tmp_path / "run")]
    for item in RESUME + ["train.num_workers=0"]:
        args += ["--set", item]
    code, _ = run_cli(args)
    assert code == 3 and not (tmp_path / "run" / "summary.json").exists()  # quit before finishing the step
    assert "interrupted; no checkpoint was written yet: run the same command again" in capsys.readouterr().err
    at = 6  # after the first train line (step 4), before the first checkpoint (step 4 is one: every 8 here)
    args = [a.replace("train.checkpoint_every=4", "train.checkpoint_every=8") for a in args]
    assert run_cli(args)[0] == 3 and (tmp_path / "run" / "metrics.jsonl").is_file()
    said = capsys.readouterr().err
    assert "no checkpoint was written yet: the same command with --resume starts the run again" in said
    assert run_cli(args)[0] == 2  # the same command alone: refused, the folder holds a run


def test_a_second_ctrl_c_after_a_checkpoint_says_to_resume(tmp_path, monkeypatch, capsys):
    from repre import pretraining

    def interrupted(cfg, out, **kw):
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "step-00000004.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(pretraining, "pretrain", interrupted)
    assert run_cli(["pretrain", "--out", str(tmp_path / "run")])[0] == 3
    assert f"interrupted; `repre pretrain --out {tmp_path / 'run'} --resume` goes on" in capsys.readouterr().err


def test_sync_free_steps_skip_non_finite_steps_on_the_device(tmp_path, repre_log):
    """train.host_sync=log (the GPU default): no host sync in the step; the fused AdamW step skips itself on a
    non-finite loss, the counters are read at log steps, and max_bad_steps stops the run there."""
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=12", "train.log_every=3", "train.checkpoint_every=3",
                                  "train.max_bad_steps=3", "train.num_workers=0", "train.host_sync=log"),
                      tmp_path / "run")
    assert isinstance(trainer.guard, DeviceGuard) and trainer.optimizer.defaults["fused"]
    before = poison(trainer, {1, 5, 6, 7})  # steps 2, 6-8 (1-based): a lone one, then a streak of 3
    with pytest.raises(StoppedEarly) as stop:
        trainer.fit()
    summary = __import__("json").loads(str(stop.value))
    assert not summary["completed"] and summary["steps"] == 9 and summary["nonfinite_steps"] == 4
    encoder = trainer.model.method.encoder.state_dict()
    assert all(torch.equal(before[2][k], before[1][k]) for k in encoder)  # step 2 skipped on the device
    assert not all(torch.equal(before[3][k], before[2][k]) for k in encoder)  # step 3 trained
    assert all(torch.equal(before[8][k], before[5][k]) for k in encoder)  # steps 6-8 skipped
    assert not all(torch.equal(encoder[k], before[8][k]) for k in encoder)  # step 9 ran before the check
    assert summary["checkpoint"].endswith("step-00000003.pt")  # none at step 6: it was non-finite
    assert "skipped for a non-finite loss" in repre_log.text and "3 non-finite steps in a row" in repre_log.text
    lines = [__import__("json").loads(x) for x in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [3, 6, 9]  # the stopping window's line too


@pytest.mark.parametrize("main", [True, False])
@pytest.mark.parametrize("strategy", ["host", "device"])
def test_a_step_another_process_found_non_finite_is_skipped_and_logged_here(monkeypatch, strategy, main, repre_log):
    """Distributed: this process's loss is finite, another's is not; the step is skipped here too, and the
    guard's outcome says so (1, not this process's own 0: averaged over processes it reads 1). Rank 0 alone
    says so (every process skips it)."""
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), fused=strategy == "device")
    layer(torch.ones(1, 2)).sum().backward()
    before = [p.detach().clone() for p in layer.parameters()]
    monkeypatch.setattr(guard_mod.dist, "is_distributed", lambda: True)
    monkeypatch.setattr(guard_mod.dist, "all_reduce_sum", lambda x: x + torch.tensor([1.0, 0.0, 0.0]))  # a bad rank
    monkeypatch.setattr(guard_mod.dist, "all_reduce_max", lambda x: torch.ones_like(x))
    monkeypatch.setattr(guard_mod.dist, "is_main", lambda: main)
    state = RunState()
    guard = HostGuard(state, 3) if strategy == "host" else DeviceGuard(state, 3, torch.device("cpu"))
    finite, overflow, loss = torch.tensor(True), torch.tensor(False), torch.tensor(1.0)
    outcome = guard.step(optimizer, finite, overflow, loss, torch.tensor(1.0), stop_requested=False)
    assert outcome.skipped.item() == 1.0 and not outcome.stop
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))  # no process took the step
    guard.sync()
    assert state.nonfinite_steps == 1
    assert sum("skipped" in m for m in repre_log.messages) == int(main)


@pytest.mark.parametrize("strategy", ["host", "device"])
def test_a_non_finite_loss_skips_the_step_though_its_gradients_are_finite(strategy):
    """A NaN loss whose gradients are finite (fp16: the loss scaler finds nothing to skip) still skips the step,
    and an fp16 overflow is skipped without being counted or ending the streak."""
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), fused=strategy == "device")
    state = RunState(bad_streak=1)
    guard = HostGuard(state, 3) if strategy == "host" else DeviceGuard(state, 3, torch.device("cpu"))
    guard.start()
    for finite, overflow in [(False, False), (True, True)]:
        layer(torch.ones(1, 2)).sum().backward()
        before = [p.detach().clone() for p in layer.parameters()]
        outcome = guard.step(optimizer, torch.tensor(finite), torch.tensor(overflow), torch.tensor(float("nan")),
                             torch.tensor(1.0), stop_requested=False)
        assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))
        assert outcome.skipped.item() == float(not finite)
    guard.sync()
    assert (state.nonfinite_steps, state.bad_streak) == (1, 2)  # the overflow: neither counted nor a reset


@pytest.mark.parametrize("host_sync", ["step", "log"])
def test_fp16_overflow_at_the_loss_scale_floor_counts_as_non_finite(tmp_path, host_sync):
    """fp16: gradients that overflow while the scaler can lower its scale are its business (skipped, not
    counted); at its floor (1.0) they are non-finite gradients, counted until max_bad_steps stops the run, and
    the scale never goes below it (GradScaler's would reach 0 and unscale finite gradients into NaN weights)."""
    from repre.core.runtime import LossScaler

    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=12", "train.max_bad_steps=3", "train.num_workers=0",
                                  "train.precision=fp16", f"train.host_sync={host_sync}", "train.log_every=1"),
                      tmp_path / "run")
    trainer.scaler.current()  # the scale made, then set as after many halvings: two more overflows reach the floor
    trainer.scaler.update(4.0)
    first = next(p for p in trainer.model.method.encoder.parameters() if p.requires_grad)
    first.register_hook(lambda g: g * float("nan"))  # every gradient non-finite, every loss finite
    before = {k: v.clone() for k, v in trainer.model.method.encoder.state_dict().items()}
    with pytest.raises(StoppedEarly) as stop:
        trainer.fit()
    summary = stop.value.summary
    assert summary["diverged"] and (summary["steps"], summary["nonfinite_steps"]) == (5, 3)  # 2 uncounted first
    assert trainer.scaler.get_scale() == LossScaler.FLOOR
    after = trainer.model.method.encoder.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after)


def test_skipped_step_is_the_guards_outcome_not_the_local_loss(tmp_path):
    """The train line's `skipped_step` is the skip the processes agreed on (`Outcome.skipped`), not whether
    this process's loss was finite: here the guard skips a step whose local loss is finite."""
    from repre.engine.guard import Outcome

    trainer = Trainer(tiny_config(*RESUME, "train.num_workers=0"), tmp_path / "run")
    trainer.guard.step = lambda *args, **kw: Outcome(torch.tensor(1.0), False)  # another process's NaN
    batch = next(iter(trainer.data.loader(0, False)))
    with trainer.settings():
        values = trainer.train_step(trainer.data.to_device(batch))
    assert torch.isfinite(values["loss"]) and values["skipped_step"].item() == 1.0


def test_sync_free_skip_count_carries_over_a_resume(tmp_path, repre_log):
    settings = [*RESUME, "train.log_every=2", "train.checkpoint_every=2", "train.num_workers=0", "train.host_sync=log"]
    trainer = Trainer(tiny_config(*settings, "train.max_steps=4"), tmp_path / "run")
    poison(trainer, {1})  # step 2 (1-based)
    assert trainer.fit()["nonfinite_steps"] == 1
    resumed = Trainer(tiny_config(*settings, "train.max_steps=8"), tmp_path / "run", resume=True)
    assert resumed.fit()["nonfinite_steps"] == 1
    assert repre_log.text.count("skipped for a non-finite loss") == 1
    assert "resuming a run of 4 steps as one of 8: the learning rate" in repre_log.text  # the schedules follow


def test_resume_on_another_device_says_its_steps_compute_differently(tmp_path, repre_log):
    """train.device may change on resume, and `auto` precision with it: the checkpoint records how its steps
    were computed, and a resume computing otherwise says so."""
    settings = [*RESUME, "train.checkpoint_every=2", "train.num_workers=0", "train.device=cpu"]
    Trainer(tiny_config(*settings, "train.max_steps=2"), tmp_path / "run").fit()
    path = ckpt_io.step_checkpoints(tmp_path / "run")[-1]
    ckpt = ckpt_io.load(path)
    assert ckpt["runtime"] == {"device": "cpu", "precision": "fp32", "processes": 1, "fused_adamw": False}
    ckpt_io.save({**ckpt, "runtime": {"device": "cuda", "precision": "bf16", "processes": 1}}, path)  # a GPU's
    assert Trainer(tiny_config(*settings, "train.max_steps=4"), tmp_path / "run", resume=True).fit()["steps"] == 4
    assert "resuming a run trained on cuda in bf16 on cpu in fp32: the steps from here" in repre_log.text
    assert "--set train.device=cuda --set train.precision=bf16 to go on" in repre_log.text
    path = ckpt_io.step_checkpoints(tmp_path / "run")[-1]
    ckpt = ckpt_io.load(path)
    ckpt_io.save({**ckpt, "runtime": {"device": "cpu", "precision": "bf16", "processes": 1}}, path)
    repre_log.clear()  # the same device in another precision: the remedy is the precision alone
    assert Trainer(tiny_config(*settings, "train.max_steps=6"), tmp_path / "run", resume=True).fit()["steps"] == 6
    assert "trained on cpu in bf16 on cpu in fp32" in repre_log.text
    assert "--set train.precision=bf16 to go on as it was" in repre_log.text
    assert "train.device=" not in repre_log.text
    repre_log.clear()  # train.host_sync (run-only) changed: AdamW's kernel, which rounds otherwise
    Trainer(tiny_config(*settings, "train.max_steps=8", "train.host_sync=log"), tmp_path / "run", resume=True).fit()
    assert ("trained on cpu in fp32 (unfused AdamW) on cpu in fp32 (fused AdamW): the steps from here compute "
            "differently") in repre_log.text and "--set train.host_sync=step to go on" in repre_log.text


@pytest.mark.parametrize("before,after", [("step", "log"), ("log", "step")])
def test_resume_may_change_host_sync_and_with_it_the_fused_optimizer(tmp_path, before, after):
    """The checkpointed optimizer's `fused` flag and step counters follow this run's choice (a CPU run resumed
    on a GPU switches to the fused AdamW the same way). On the CPU, where the choice follows host_sync."""
    settings = [*RESUME, "train.log_every=2", "train.checkpoint_every=2", "train.num_workers=0", "train.device=cpu"]
    Trainer(tiny_config(*settings, "train.max_steps=2", f"train.host_sync={before}"), tmp_path / "run").fit()
    resumed = Trainer(tiny_config(*settings, "train.max_steps=4", f"train.host_sync={after}"), tmp_path / "run",
                      resume=True)
    assert bool(resumed.optimizer.param_groups[0]["fused"]) == (after == "log")
    assert resumed.fit()["steps"] == 4


def test_deterministic_mode_is_on_for_the_run_and_refuses_what_a_gpu_cannot_do(tmp_path):
    from repre.builder import check_builds

    cuda, deterministic = torch.device("cuda"), "train.deterministic=true"
    with pytest.raises(UserError, match="recon.upsample=nearest"):  # raised before anything touches CUDA
        check_builds(tiny_config(deterministic, "recon.upsample=bilinear", "recon.out_stride=2"), cuda)
    assert build_model(tiny_config("recon.out_stride=2"), 10).branch.resamples(16)  # one x2 step
    # a decoder that never interpolates runs with bilinear set: patch 4 reconstructed by a 4x4 shuffle
    assert not build_model(tiny_config(), 10).branch.resamples(16)
    check_builds(tiny_config(deterministic, "recon.upsample=bilinear"), cuda)
    assert build_model(tiny_config(*SWIN_TINY, "recon.out_stride=2"), 10).branch.resamples(32)  # stages' strides
    with pytest.raises(UserError, match="data.local_crops=0"):
        check_builds(tiny_config(deterministic, "recon.upsample=nearest", *DINO_TINY), cuda)
    check_builds(tiny_config("recon.upsample=nearest", *DINO_TINY), cuda)  # not deterministic: fine
    assert not torch.are_deterministic_algorithms_enabled()
    cfg = tiny_config("train.deterministic=true", "train.device=cpu", "train.max_steps=2", "eval.knn.enabled=false")
    trainer = Trainer(cfg, tmp_path / "run")  # the CPU has deterministic backwards for bilinear steps
    assert not torch.are_deterministic_algorithms_enabled()  # construction changes no process-wide setting
    seen = []
    step = trainer.train_step
    trainer.train_step = lambda batch: seen.append(torch.are_deterministic_algorithms_enabled()) or step(batch)
    assert trainer.fit()["completed"] and seen == [True, True]  # on for every step of the run
    assert not torch.are_deterministic_algorithms_enabled()  # put back when the run ends
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):  # a construction that fails leaves nothing on either
        Trainer(cfg, tmp_path / "file")
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data:\n  name: synthetic\n")
    with pytest.raises(UserError, match="is not a checkpoint"):
        ckpt_io.load(path)


def test_a_run_without_a_checkpoint_yet_says_so(tmp_path):
    """`repre eval --checkpoint RUN` while RUN is at its first steps: the run is named as one, not as a
    missing file; a folder that holds no run keeps the plain message."""
    (tmp_path / "config.yaml").write_text("data:\n  name: synthetic\n")
    with pytest.raises(UserError, match="is a run without a checkpoint yet .a run writes one every train.checkpoint_e"):
        ckpt_io.load(tmp_path)
    (tmp_path / "photos").mkdir()
    with pytest.raises(UserError, match="checkpoints/last.pt does not exist; give a .pt file or a run directory"):
        ckpt_io.load(tmp_path / "photos")


def test_a_run_directory_another_process_trains_is_refused_and_free_again_when_it_ends(tmp_path, capsys,
                                                                                      monkeypatch):
    """A second process training one directory (a requeue while the first runs, the workers a SIGKILLed
    torchrun leaves) would write its checkpoints and metrics lines among the first's: refused, naming the
    holder, before anything is written or the data indexed (ImageNet's folder: a minute). The lock is gone
    with its process, however that ends."""
    run = tmp_path / "run"
    args = ["pretrain", "--out", str(run), "--resume"]
    for item in RESUME:
        args += ["--set", item]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from repre.core.run_lock import RunLock; "
        f"Path({str(run)!r}).mkdir(); lock = RunLock(Path({str(run)!r})); assert lock.acquire() is None; "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with monkeypatch.context() as patched:
            patched.setattr("repre.engine.trainer.PretrainData", None)  # indexing the data would fail otherwise
            assert run_cli(args)[0] == 2
            assert f"{run} is being trained by another process (pid {holder.pid} on " in capsys.readouterr().err
            assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()
            (run / "metrics.jsonl").write_text("")  # a run, as far as the second process can tell
            assert run_cli([a for a in args if a != "--resume"])[0] == 2  # not "add --resume": it is trained
            assert "is being trained by another process" in capsys.readouterr().err
            (run / "metrics.jsonl").unlink()
    finally:
        holder.kill()  # SIGKILL: no unlock but the system's
        holder.wait()
    assert run_cli([*args, "--set", "train.max_steps=1"])[0] == 0  # one step shows the lock free


def lock_free(folder: Path) -> bool:
    """Whether another process could take `folder`'s run lock now."""
    code = ("from pathlib import Path; from repre.core.run_lock import RunLock; "
            f"lock = RunLock(Path({str(folder)!r})); print(lock.acquire() is None)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def test_trainers_of_one_process_share_its_lock_until_the_last_lets_go(tmp_path):
    """Closing any descriptor of a file drops a process's POSIX lock on it: two trainers of one directory in one
    process (a notebook's) share one lock, counted; it stays while either holds it, and is given back when the
    last unlocks it or is collected."""
    import gc

    from repre.core.run_lock import RunLock

    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None and second.acquire() is None and not lock_free(tmp_path)
    first.unlock()
    assert not lock_free(tmp_path)
    del second
    gc.collect()
    assert lock_free(tmp_path)


def test_a_trainer_fitted_again_trains_under_the_lock_again(tmp_path):
    """fit() gives the lock back when it ends; a second fit() of the trainer (after a stop, in a notebook) takes
    it again for as long as it trains."""
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=2", "eval.knn.enabled=false"), run)
    trainer.fit()
    assert lock_free(run)
    seen = []
    trainer._fit = lambda: seen.append(lock_free(run)) or {}  # the second run's body: is the lock held?
    trainer.fit()
    assert seen == [False] and lock_free(run)


def test_a_requeue_that_lost_its_length_is_refused_with_config_and_goes_on_when_it_gives_it(tmp_path, capsys):
    """`--resume --config PRESET` without the run's `--set train.max_steps=4` would go on as a run of the preset's
    800 steps, its schedules rebuilt: refused, naming both lengths; the same with the length given (or without
    --config: the run's own config) goes on."""
    run = tmp_path / "run"
    items = [item for item in RESUME if not item.startswith("train.max_steps=")]
    lost = ["--config", "fmnist-mocov3-repre", *[a for item in items for a in ("--set", item)]]
    assert run_cli(["pretrain", "--out", str(run), *lost, "--set", "train.max_steps=4"])[0] == 0
    assert run_cli(["pretrain", "--out", str(run), "--resume", *lost])[0] == 2
    err = capsys.readouterr().err
    assert f"--resume into {run}: the run has train.max_steps=4, train.epochs=" in err
    assert "gives train.max_steps=800" in err
    assert run_cli(["pretrain", "--out", str(run), "--resume", *lost, "--set", "train={max_steps: 6}"])[0] == 0
    assert run_cli(["pretrain", "--out", str(run), "--resume"])[0] == 0  # its own config: 6 steps, done


def test_a_stop_signal_to_the_whole_process_group_ends_the_step_and_writes_a_checkpoint(tmp_path):
    """scancel, `timeout` and a terminal's Ctrl-C signal every process of the job, the data workers too: the run
    still ends its step, writes a checkpoint and exits 3 (a worker the signal killed ended the run with
    PyTorch's "DataLoader worker is killed by signal", and no checkpoint)."""
    out = tmp_path / "run"
    cmd = pretrain_cmd(out, ["train.max_steps=100000", "train.num_workers=1", "train.log_every=1"])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr[-2000:]
    assert "stopped at step" in stderr and (out / "checkpoints" / "last.pt").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no terminals' hang-up on Windows")
@pytest.mark.parametrize("how", ["hang-up", "kill"])
def test_a_closed_terminal_stops_the_run_at_a_step_with_a_checkpoint(tmp_path, how):
    """An ssh session lost or a terminal window closed: the terminal hangs up and its session gets SIGHUP, which
    ended the run where it stood, the steps since its last checkpoint lost. It stops as for SIGTERM instead:
    its data worker goes on, what it wrote to the terminal (a progress bar each step) goes to /dev/null, and it
    writes its checkpoint and summary and exits 3. A `kill -HUP` with the terminal still there stops it alike,
    and its last lines still reach the terminal."""
    import pty
    import select

    out = tmp_path / "run"
    cmd = pretrain_cmd(out, ["train.max_steps=100000", "train.num_workers=1", "train.log_every=1",
                             "train.progress=true"])
    pid, terminal = pty.fork()  # the child leads a session whose controlling terminal is the pty
    if pid == 0:
        try:  # a terminal's session starts with SIGHUP at its default, whatever ran these tests (nohup)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)  # never this test's process going on in the child
    written, status = b"", None

    def waited(seconds: float) -> int | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                return code
            time.sleep(0.05)
        return None

    try:
        metrics, deadline = out / "metrics.jsonl", time.monotonic() + 240
        while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text()):
            if select.select([terminal], [], [], 0.05)[0]:
                try:  # read what the run writes, as a terminal does, or its writes would block
                    written += os.read(terminal, 65536)
                except OSError:  # the run ended, its side closed
                    break
        assert metrics.is_file() and metrics.read_text(), written.decode(errors="replace")[-2000:]
        if how == "kill":
            os.kill(pid, signal.SIGHUP)
            while select.select([terminal], [], [], 120)[0]:
                try:
                    written += os.read(terminal, 65536)
                except OSError:  # the run ended, its side closed
                    break
            text = written.decode(errors="replace")
            assert "stopped at step" in text and '"completed": false' in text, text[-2000:]
        os.close(terminal)  # the hang-up, or the terminal closed after the run
        terminal = -1
        status = waited(120)
        assert status is not None, "the run went on after its terminal hung up"
    finally:
        if terminal >= 0:
            os.close(terminal)
        if status is None:  # a run still going, or ended but not yet reaped
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3, f"wait status {status}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is False and (out / "checkpoints" / "last.pt").is_file()


def test_a_run_started_under_nohup_keeps_ignoring_the_hang_up():
    """`nohup` starts the run to outlive its terminal (SIGHUP ignored): the stop handler leaves it so. Where
    SIGHUP would end the process, it stops the run, and the default is put back after."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with GracefulStop():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with GracefulStop() as stop:
            assert signal.getsignal(signal.SIGHUP) == stop._handle
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("host_sync", ["step", "log"])
def test_a_skipped_step_leaves_the_running_statistics_as_they_were(tmp_path, host_sync):
    """A NaN in a step's forward updates the heads' batch-norm running statistics before the step is known to be
    skipped: the skip puts them back (they stayed NaN in every later checkpoint)."""
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=4", "train.num_workers=0", f"train.host_sync={host_sync}",
                                  "train.log_every=1"), tmp_path / "run")
    forward, step, seen = trainer.forward_model, trainer.train_step, {}

    def nan_at_step_2(views, *args, **kw):
        return forward(views * float("nan") if trainer.state.step == 1 else views, *args, **kw)

    def recorded(batch):
        seen.setdefault(trainer.state.step, [b.clone() for b in trainer.forward_buffers.live])
        return step(batch)

    trainer.forward_model, trainer.train_step = nan_at_step_2, recorded
    assert trainer.fit()["nonfinite_steps"] == 1 and trainer.forward_buffers.live
    assert all(torch.equal(a, b) for a, b in zip(seen[1], seen[2], strict=True))  # step 2 left them as they were
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))  # step 3 moved them
    assert all(torch.isfinite(b).all() for b in trainer.forward_buffers.live)


@pytest.mark.parametrize("host_sync", ["step", "log"])
@pytest.mark.parametrize("method", [[], DINO_TINY, SWIN_TINY], ids=["mocov3", "dino", "moby"])
def test_a_step_skipped_for_its_loss_puts_back_every_buffer_its_forward_moved(tmp_path, method, host_sync):
    """The usual divergence: the student's loss turns NaN while the teacher's outputs and keys stay finite.
    DINO's center and MoBY's queues took that step's values, and the heads' batch-norm counts moved (the
    documented promise: a skipped step leaves them as they were). Every buffer but the EMA copies' is compared."""
    trainer = Trainer(tiny_config(*RESUME, *method, "train.max_steps=4", "train.num_workers=0",
                                  f"train.host_sync={host_sync}"), tmp_path / "run")
    forward, step, seen = trainer.forward_model, trainer.train_step, {}

    def nan_loss_at_step_2(*args, **kw):
        out = forward(*args, **kw)
        if trainer.state.step == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    def buffers() -> dict[str, torch.Tensor]:  # the EMA copies' heads' batch-norm statistics too (a forward's)
        return {k: v.clone() for k, v in trainer.model.named_buffers()}

    def recorded(batch):
        seen.setdefault(trainer.state.step, buffers())
        return step(batch)

    trainer.forward_model, trainer.train_step = nan_loss_at_step_2, recorded
    assert trainer.fit()["nonfinite_steps"] == 1
    moved = [k for k in seen[1] if not torch.equal(seen[1][k], seen[2][k])]
    assert moved == []
    assert any(not torch.equal(seen[2][k], seen[3][k]) for k in seen[2])  # the next step moves them


def test_a_config_file_of_another_name_resumes_the_run_it_describes(tmp_path):
    """The preset label is where a config came from, not what it computes: the run's config.yaml saved as
    my.yaml (preset `my`) resumes it (it was refused as a change of preset)."""
    run = tmp_path / "run"
    assert run_cli(pretrain_args(run, *RESUME, "train.max_steps=2", "train.num_workers=0"))[0] == 0
    text = (run / "config.yaml").read_text()
    mine = tmp_path / "my.yaml"
    mine.write_text("\n".join("preset: my" if ln.startswith("preset:") else ln for ln in text.splitlines()) + "\n")
    code, _ = run_cli(["pretrain", "--out", str(run), "--resume", "--config", str(mine), "--set", "train.max_steps=3"])
    assert code == 0


def test_a_run_that_raises_ends_its_tensorboard_writer_and_progress_bar(tmp_path, monkeypatch):
    """A notebook's run that an error or a second Ctrl-C ends: TensorBoard's writer thread and the bar end with
    it (each such run left a thread behind), and the same process resumes the run."""
    import threading

    from tqdm import tqdm

    def writers() -> int:
        return sum(type(t).__name__ == "_AsyncWriterThread" for t in threading.enumerate())

    before = writers()
    original, calls = Trainer.train_step, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    settings = [*RESUME, "train.num_workers=0", "train.progress=true"]
    with monkeypatch.context() as patched:
        patched.setattr(Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            Trainer(tiny_config(*settings), tmp_path / "run").fit()
    assert writers() == before and not list(tqdm._instances)
    assert Trainer(tiny_config(*settings), tmp_path / "run", resume=True).fit()["completed"]


def test_a_write_removes_what_a_killed_write_of_the_same_file_left(tmp_path):
    """An export SIGKILLed while writing left its hidden temporary (the size of the weights) for good: the next
    write of that file removes those of processes that are gone and untouched for a while; a live process's, a
    fresh one (a write on another host of a shared folder, where its number says nothing) and other files'
    stay."""
    from repre.core.atomic import ABANDONED_S, replacing

    def gone_pid() -> str:
        return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()

    gone, gone_too = gone_pid(), gone_pid()
    old = time.time() - ABANDONED_S - 60
    stays = [f".enc.{os.getppid()}.tmp.safetensors", f".other.{gone}.tmp.safetensors", f".enc.{gone}.tmp.json"]
    for name in (f".enc.{gone}.tmp.safetensors", *stays):
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (old, old))
    (tmp_path / f".enc.{gone_too}.tmp.safetensors").write_bytes(b"partial")  # gone, but written just now
    with replacing(tmp_path / "enc.safetensors") as tmp:
        tmp.write_bytes(b"weights")
    assert (tmp_path / "enc.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / f".enc.{gone}.tmp.safetensors").exists()
    assert all((tmp_path / name).exists() for name in (*stays, f".enc.{gone_too}.tmp.safetensors"))


def test_processes_that_see_other_checkpoints_stop_naming_the_folder(tmp_path, monkeypatch):
    """Every process resumes from rank 0's choice; a process that cannot read it (a node whose view of --out
    lags) stops every process with one message (each went on from its own newest, or none, and waited in a
    collective for good). Damage that every process finds is moved aside as before."""
    import types

    import repre.engine.checkpoints as checkpoints_mod
    from repre.engine.checkpoints import Checkpoints

    out = tmp_path / "run"
    Trainer(tiny_config(*RESUME, "train.max_steps=4", "train.num_workers=0"), out).fit()
    newest = ckpt_io.step_checkpoints(out)[-1]
    views = {"rank 1": "checkpoint does not exist there"}
    monkeypatch.setattr(checkpoints_mod.dist, "gather_objects",
                        lambda why: [why, None if why is None and not views else views["rank 1"]])
    holder = types.SimpleNamespace(out=out)
    with pytest.raises(UserError, match=r"process 1 cannot read the checkpoint that the others read \(checkpoint "
                                        r"does not exist there\): .*run must be one folder that every process sees "
                                        r"whole"):
        Checkpoints._first_readable(holder, [newest])
    assert newest.is_file()  # not moved aside: rank 0 read it
    views.clear()
    assert Checkpoints._first_readable(holder, [newest])[1] == newest


def test_a_supervised_run_whose_data_gained_a_class_is_refused_on_resume_in_words(tmp_path, image_folder, capsys):
    """The head has the class count of the data it trained on: a class added since made `--resume` a traceback
    (a size mismatch inside load_state_dict)."""
    import shutil

    args = pretrain_args(tmp_path / "sup", "method.name=supervised", "data.name=folder", f"data.root={image_folder}",
                         "train.batch_size=8", "train.max_steps=2", "train.eval_every=0")
    assert run_cli(args)[0] == 0
    shutil.copytree(image_folder / "train" / "cat", image_folder / "train" / "cow")
    longer = [a if a != "train.max_steps=2" else "train.max_steps=3" for a in args]
    assert run_cli([*longer, "--resume"])[0] == 2
    said = capsys.readouterr().err
    assert "its weights do not fit this run's model (method.name=supervised: the data hold 3 classes now" in said
    assert "size mismatch for method.head.weight" in said


def test_a_lock_file_removed_while_it_was_locked_is_locked_again_where_it_is_now(tmp_path, monkeypatch):
    """A lock that removes its file when given back (embed's) lets another process lock the file it opened just
    before: holding a file of no name, it would write beside a new holder. Each process checks that the file
    it locked is still there; after three tries it says so rather than hold nothing."""
    from repre.core.run_lock import RunLock

    answers = iter([False, True])
    monkeypatch.setattr(RunLock, "_still_named", lambda self, fd: next(answers))
    lock = RunLock(tmp_path, ".x.lock", "x is being written", remove=True)
    assert lock.acquire() is None  # locked on the second try
    lock.unlock()
    assert not (tmp_path / ".x.lock").exists()  # removed with the lock
    monkeypatch.setattr(RunLock, "_still_named", lambda self, fd: False)
    why = RunLock(tmp_path, ".x.lock", "x is being written", remove=True).acquire()
    assert why and "was removed each time this process locked it" in why


def test_a_failure_while_weights_are_copied_on_resume_is_not_said_as_weights_that_do_not_fit(tmp_path, monkeypatch):
    """load_state_dict wraps an error raised while it copies (out of memory on a GPU) in its own "Error(s) in
    loading state_dict": that error goes on as it is, to the out-of-memory advice, not "train anew"."""
    trainer = Trainer(tiny_config(*RESUME, "train.max_steps=2"), tmp_path / "run")
    oom = ('Error(s) in loading state_dict for RePre:\n\tWhile copying the parameter named "w", whose dimensions in '
           "the model are torch.Size([2]), an exception occurred : ('CUDA out of memory. Tried to allocate 2 GiB',).")

    def failing(*args, **kw):
        raise RuntimeError(oom)

    monkeypatch.setattr(trainer.model, "load_state_dict", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.checkpoints._restore({"model": {}}, tmp_path / "x.pt")


def test_a_checkpoint_read_for_its_config_alone_maps_its_weights_and_is_not_hashed(tiny_run, tmp_path, monkeypatch):
    """neighbors and map read a run's data config: they read and hashed its whole checkpoint (most of their time
    on a large one), twice with --query-embeddings. The config alone maps the tensors and skips the hash; the
    weights are read and checked as before."""
    import shutil

    step_file = tmp_path / "step-00000020.pt"
    shutil.copy(tiny_run[0] / "checkpoints" / "step-00000020.pt", step_file)
    shutil.copy(ckpt_io._sidecar(tiny_run[0] / "checkpoints" / "step-00000020.pt"), ckpt_io._sidecar(step_file))
    full = ckpt_io.load(step_file)
    monkeypatch.setattr(ckpt_io, "verify", lambda *a, **k: pytest.fail("hashed for its config"))
    light = ckpt_io.load(step_file, weights=False)
    assert light["config"] == full["config"] and light["step"] == full["step"]
    monkeypatch.undo()
    with open(step_file, "r+b") as fh:  # a damaged byte: the weights' load refuses, the config's does not read it
        fh.seek(step_file.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UserError, match="is damaged"):
        ckpt_io.load(step_file)


def test_ctrl_c_while_a_checkpoint_is_written_is_no_disk_error(tmp_path, monkeypatch):
    """torch.save's zip writer turns a KeyboardInterrupt raised in its write into a RuntimeError ("unexpected
    pos"), which the save took for a failed write: "is the disk full?". It stays a KeyboardInterrupt, and the
    temporary files go."""
    def interrupted(state, fh):
        fh.write(b"partial")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    path = tmp_path / "checkpoints" / "step-00000001.pt"
    path.parent.mkdir()
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save({"schema": 1}, path)
    assert list(path.parent.iterdir()) == []


@pytest.mark.parametrize("poisoned", [{1}, {2, 3}])
def test_data_failing_between_log_steps_saves_the_guard_s_current_counts(tmp_path, poisoned):
    """With the counts on the device (train.host_sync=log) the checkpoint written when the data fails held the
    counts of the last sync point (0 skipped steps where 1 was); within a run of non-finite steps none is
    written, as at any checkpoint step."""
    from repre.errors import UserError

    args = (*RESUME, "train.max_steps=8", "train.log_every=100", "train.checkpoint_every=100",
            "train.max_bad_steps=3", "train.num_workers=0", "train.host_sync=log")
    trainer = Trainer(tiny_config(*args), tmp_path / "run")
    poison(trainer, poisoned)
    loader = trainer.data.loader

    def failing(*a, **kw):
        for i, batch in enumerate(loader(*a, **kw)):
            if i == 4:
                raise UserError("none of the images could be read")
            yield batch

    trainer.data.loader = failing
    with pytest.raises(UserError) as raised:
        trainer.fit()
    if poisoned == {2, 3}:  # steps 3 and 4 skipped: a streak when the data failed
        assert "no checkpoint was written (the last steps were non-finite)" in str(raised.value)
        assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
        return
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")
    assert saved["step"] == 4 and (saved["run"]["nonfinite_steps"], saved["run"]["bad_streak"]) == (1, 0)


def test_resume_restores_every_run_counter(tmp_path):
    """summary.json's counts cover the whole run, its images/s all its images over all its training time."""
    settings = [*RESUME, "train.num_workers=0"]
    first = Trainer(tiny_config(*settings, "train.max_steps=4"), tmp_path / "run")
    first.fit()
    first.state.skipped_images, first.state.upscaled_images = 3, 5  # as a folder of broken and small images gives
    first.checkpoints.save()
    resumed = Trainer(tiny_config(*settings, "train.max_steps=8"), tmp_path / "run", resume=True)
    assert resumed.state.to_dict() == first.state.to_dict()
    assert resumed.state.images_seen == 4 * first.cfg.train.batch_size


def test_resume_restores_the_fp16_loss_scale(tmp_path):
    """A resumed fp16 run goes on at the scale it had (not GradScaler's 65536, whose steps would overflow and be
    skipped until it halved back down)."""
    settings = [*RESUME, "train.num_workers=0", "train.precision=fp16"]
    first = Trainer(tiny_config(*settings, "train.max_steps=4"), tmp_path / "run")
    first.scaler.current()
    first.scaler.update(4.0)  # as after overflows
    first.fit()
    resumed = Trainer(tiny_config(*settings, "train.max_steps=8"), tmp_path / "run", resume=True)
    assert resumed.scaler.get_scale() == first.scaler.get_scale() == 4.0
