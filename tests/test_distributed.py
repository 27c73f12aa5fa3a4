"""Distributed pre-training on CPU (gloo) through torchrun: N processes must compute what one process computes
with the same global batch, and resume exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DINO_TINY, SWIN_TINY, TINY
from repre.core import checkpoint_io as ckpt_io

# fp32 and no drop path: the processes' random draws are their own, the rest must match one process; the CPU
# (gloo) even where a GPU is present (two processes would otherwise share it)
EXACT = TINY + ["train.device=cpu", "train.precision=fp32", "model.drop_path=0.0", "train.log_every=1",
                "eval.knn.enabled=false", "train.diagnose_every=0", "train.num_workers=0"]


def pretrain_cmd(out: Path, procs: int, extra: list[str]) -> list[str]:
    """procs 0 or 1: one plain process; N > 1, or -1 (one process): under torchrun."""
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={abs(procs)}"]
              if procs > 1 or procs < 0 else [sys.executable])
    cmd = [*launch, "-m", "repre", "pretrain", "--out", str(out)]
    for item in EXACT + extra:
        cmd += ["--set", item]
    return cmd


def run_plain(out: Path, extra: list[str]) -> None:
    """One plain process's run, in this process (what `python -m repre pretrain` runs, without the launch)."""
    from repre.config import load_config
    from repre.pretraining import pretrain

    pretrain(load_config(None, EXACT + extra), out)


def run(out: Path, procs: int, extra: list[str], resume: bool = False) -> subprocess.CompletedProcess:
    cmd = pretrain_cmd(out, procs, extra) + (["--resume"] if resume else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_model(out: Path) -> dict[str, torch.Tensor]:
    return ckpt_io.load(out / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("name,extra", [
    # with the loss-balance diagnostics (every preset measures them): their extra gradients leave DDP's alone
    ("mocov3", ["train.max_steps=5", "train.diagnose_every=2"]),
    # one view reconstructed: 3 images a process, so the second's first image is odd and its second view is
    # the one reconstructed
    ("mocov3-one-view", ["train.max_steps=3", "recon.views=1", "train.batch_size=6"]),
    ("dino", DINO_TINY + ["train.max_steps=5", "train.host_sync=log"]),  # and no host sync in the step
    ("moby", SWIN_TINY + ["train.max_steps=4", "train.batch_size=12"]),  # 24 keys a step: the queue (40) wraps
    # the in1k presets' train.compile=true under DDP (its compiled blocks inside DDP's bucketed backward); long on
    # a CPU: run with -m slow
    pytest.param("mocov3-compiled", ["train.max_steps=3", "train.compile=true"], marks=pytest.mark.slow),
])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, name, extra):
    """MoCo v3: keys gathered with the offset of each process's queries, synced batch norm in the heads.
    DINO: the center averaged over processes, multi-crop. MoBY: gathered keys in the queues."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_plain(one, extra)
    done = run(two, 2, extra)
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    for key in ("embedding_std", *(["teacher_batch_entropy"] if name == "dino" else [])):  # of the global batch,
        values = [[json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()  # not of
                   if key in json.loads(line)] for out in (one, two)]  # each process's share
        assert values[0] and values[1] == pytest.approx(values[0], rel=1e-4)
    if "train.diagnose_every=2" in extra:  # measured on the global batch's gradients, as one process does
        def diag(out: Path) -> list[dict[str, float]]:
            return [{k: v for k, v in json.loads(line).items() if k.startswith("diag_")}
                    for line in (out / "metrics.jsonl").read_text().splitlines()]

        assert any(diag(two)) and diag(two) == [pytest.approx(d, rel=1e-3) for d in diag(one)]
    a, b = ckpt_io.load(one / "checkpoints" / "last.pt"), ckpt_io.load(two / "checkpoints" / "last.pt")
    # the gradients' running averages (what DDP averages), not the weights: Adam turns the rounding noise of
    # gradients that are zero in exact arithmetic (the attention key bias, a norm bias before batch norm) into
    # full +-lr steps, so weights differ by ~lr where gradients agree to 1e-6 (tolerance: relative to the largest)
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key in ("exp_avg", "exp_avg_sq"):
        scale = max(float(s[key].abs().max()) for s in state_a.values())
        for i in state_a:
            torch.testing.assert_close(state_b[i][key], state_a[i][key], rtol=1e-3, atol=1e-4 * scale,
                                       msg=f"param {i} {key}")
    for key, value in a["model"].items():  # buffers: queues and their pointer, the DINO center, BN statistics
        if key.endswith(("queue1", "queue2", "queue_ptr", "center", "num_batches_tracked", "running_mean",
                         "running_var")):
            torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-3, msg=key)
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 alone prints it
    assert summary["processes"] == 2 and summary["completed"] and done.stdout.count('"completed"') == 1


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def gone(pid: int) -> bool:
    """Exited (or a zombie nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_torchrun_with_one_process_runs_the_distributed_path_to_the_same_losses(tmp_path):
    """`torchrun --nproc_per_node 1` joins a one-process group: DDP, SyncBatchNorm and every collective run (the
    GPU check uses it to test NCCL on one GPU) and compute what a plain process computes."""
    run_plain(tmp_path / "plain", ["train.max_steps=3"])
    done = run(tmp_path / "torchrun", -1, ["train.max_steps=3"])
    assert "distributed: 1 process (gloo)" in done.stderr
    assert losses(tmp_path / "torchrun") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


def test_killed_two_process_streamed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL of torchrun and its workers after the step-4 checkpoint (a lost machine), then --resume: the
    final weights equal (bitwise) those of an uninterrupted two-process run. Each process reads its own streamed
    shards (their positions are in the checkpoint) and the run crosses the shards' end; drop path on, so each
    process's RNG state counts. The checkpoint falls between train lines (steps 3 and 6): the resumed line of
    step 6 averages steps 4 to 6 of both processes, as the uninterrupted one."""
    from conftest import write_shards

    write_shards(tmp_path / "shards", shards=4, per_shard=12)
    extra = ["data.name=shards", f"data.root=pipe:cat {tmp_path}/shards/part-{{0000..0003}}.tar",
             "data.image_size=16", "data.shuffle_block=5", "train.batch_size=8", "train.num_workers=1",
             "train.max_steps=12", "train.checkpoint_every=4", "train.log_every=3", "model.drop_path=0.1"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run(whole, 2, extra)
    ckpt = ckpt_io.load(whole / "checkpoints" / "last.pt")
    assert len(ckpt["stream"]["ranks"]) == 2 and all(ranks.keys() == {0} for ranks in ckpt["stream"]["ranks"])
    proc = subprocess.Popen(pretrain_cmd(broken, 2, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sidecar = broken / "checkpoints" / "step-00000004.pt.sha256"
    deadline = time.monotonic() + 240
    while not sidecar.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = descendants(proc.pid)
    for pid in [proc.pid, *workers]:  # torchrun starts its workers in sessions of their own
        with contextlib.suppress(ProcessLookupError):  # gone since listed (a shard's `cat` that finished)
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while not all(map(gone, workers)):
        time.sleep(0.05)  # the workers are gone before the resume starts
    assert sidecar.is_file() and not (broken / "checkpoints" / "step-00000012.pt").exists()
    done = run(broken, 2, extra, resume=True)
    assert "step-00000004.pt (step 4 of 12)" in done.stderr
    a, b = final_model(whole), final_model(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12]
    assert losses(broken) == losses(whole)  # each process's window carried over: the same sums in the same order


def test_global_batch_must_divide_among_processes(tmp_path):
    cmd = pretrain_cmd(tmp_path / "run", 2, ["train.batch_size=15"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    printed = [ln for ln in done.stderr.splitlines() if ln.startswith("repre: error:")]
    assert len(printed) == 1 and "not divisible by the 2 processes" in printed[0]  # rank 0 says it once
    assert "traceback : repre: error: train.batch_size=15" in done.stderr  # the launcher's summary: the message


PER_RANK_IMAGES = '''
import os

import numpy as np


def images(split, root):
    count = 64 if os.environ.get("RANK", "0") == "0" else 48  # a node holding part of the images
    return [(np.full((16, 16, 3), i % 251, np.uint8), i % 2) for i in range(count)]
'''


def test_processes_that_do_not_agree_stop_at_once_naming_the_difference(tmp_path):
    """Rank 1 sees fewer images: its epochs have fewer steps, so it would leave rank 0 waiting at a collective
    until the timeout (and with the same length, train on other images silently). Both stop before training."""
    (tmp_path / "per_rank_images.py").write_text(PER_RANK_IMAGES)
    cmd = pretrain_cmd(tmp_path / "run", 2, ["data.name=python", "data.source=per_rank_images:images",
                                             "train.max_steps=0", "train.epochs=2"])
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "(training images) is 64 on rank 0, 48 on rank 1" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


MISSING_ON_RANK_1 = '''
import os

import numpy as np


def images(split, root):
    if os.environ.get("RANK") == "1":
        raise FileNotFoundError("/data/scans: missing on this node")
    return [(np.full((16, 16, 3), i % 251, np.uint8), i % 2) for i in range(64)]
'''


def test_a_process_that_fails_alone_is_named_and_the_others_say_one_line(tmp_path):
    """Rank 1 cannot read its data: its error reaches torchrun's summary, and rank 0, which lost it in a
    collective, says so in one line (it printed a traceback that buried the cause)."""
    (tmp_path / "missing_on_rank_1.py").write_text(MISSING_ON_RANK_1)
    cmd = pretrain_cmd(tmp_path / "run", 2, ["data.name=python", "data.source=missing_on_rank_1:images"])
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "missing on this node" in done.stderr
    assert "repre: error: another process of this run stopped" in done.stderr
    assert "[rank0]:Traceback" not in done.stderr and "[rank0]: Traceback" not in done.stderr


LOST_ON_RANK_1 = '''
import os
import signal
from pathlib import Path

import numpy as np


class Images:
    """Rank 1 of the first attempt is killed (a lost GPU) once the run has its step-4 checkpoint."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        first, rank_1 = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0", os.environ.get("RANK") == "1"
        if first and rank_1 and Path(os.environ["CHECKPOINTED"]).is_file():
            os.kill(os.getpid(), signal.SIGKILL)
        return np.full((16, 16, 3), i % 251, np.uint8), i % 2


def images(split, root):
    return Images()
'''


def test_torchrun_restarts_a_run_that_lost_a_process_to_the_uninterrupted_weights_and_lines(tmp_path):
    """`torchrun --max-restarts 1`: rank 1 killed after the step-4 checkpoint, every process starts again and goes
    on from it (the restarted processes met the store of the attempt before and hung, or failed to connect).
    Indexed data (the sampler's per-process shares) and drop path (each process's RNG): bitwise the weights of an
    uninterrupted two-process run. The checkpoint falls between the lines of steps 3 and 6: each process carried
    its own share of the step-6 line, so the lines are the uninterrupted run's too."""
    (tmp_path / "lost_on_rank_1.py").write_text(LOST_ON_RANK_1)
    extra = ["data.name=python", "data.source=lost_on_rank_1:images", "train.batch_size=8", "train.max_steps=9",
             "train.checkpoint_every=4", "train.log_every=3", "model.drop_path=0.1"]
    whole, out = tmp_path / "whole", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHECKPOINTED": str(out / "checkpoints" / "step-00000004.pt.sha256")}
    # first: its processes look for the other run's checkpoint, not yet written, so none of them is killed
    uninterrupted = subprocess.run(pretrain_cmd(whole, 2, extra), cwd=tmp_path, capture_output=True, text=True,
                                   timeout=240, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    cmd = pretrain_cmd(out, 2, extra)
    cmd.insert(cmd.index("--standalone"), "--max-restarts=1")
    done = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step-00000004.pt (step 4 of 9)" in done.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 9
    a, b = final_model(whole), final_model(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(out) == losses(whole) and len(losses(whole)) == 3


STOPPED_WHILE_BUILT = '''
import os
import signal
import time

import numpy as np


def images(split, root):
    if split == "train" and os.environ.get("RANK") == os.environ["SIGNALLED_RANK"]:  # while the run is built
        # rank 0: a scheduler's signal to the launcher, which passes it on to every process; rank 1: a signal
        # to one process alone (a node's own watchdog), which the others learn of when they agree
        os.kill(os.getppid() if os.environ["RANK"] == "0" else os.getpid(), signal.SIGTERM)
        time.sleep(2)
    return [(np.full((16, 16, 3), i % 251, np.uint8), i % 2) for i in range(64)]
'''


@pytest.mark.parametrize("signalled", ["0", "1"], ids=["all-processes", "rank-1-alone"])
def test_a_signal_while_a_two_process_run_builds_stops_it_before_its_first_step(tmp_path, signalled):
    """The processes agree on a stop at log steps alone (or every step with the host guard): one asked while the
    run was built trained up to a log step's worth of steps first (50 in the ImageNet presets) inside the
    launcher's grace period. They agree before the first step; the signal is said once, by rank 0: as its own,
    or as another process's when rank 1 alone received it."""
    (tmp_path / "stopped_while_built.py").write_text(STOPPED_WHILE_BUILT)
    out = tmp_path / "run"
    cmd = pretrain_cmd(out, 2, ["data.name=python", "data.source=stopped_while_built:images", "train.batch_size=8",
                                "train.max_steps=20", "train.log_every=10", "train.host_sync=log"])
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "SIGNALLED_RANK": signalled})
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["steps"]) == (False, 0), done.stderr[-2000:]
    assert done.stderr.count("SIGTERM received") == (signalled == "0"), done.stderr[-2000:]
    if signalled == "0":  # said while the run is built: no step to stop after yet
        assert "SIGTERM received: stopping once the run is built, before its first step" in done.stderr
    stopped = [line for line in done.stderr.splitlines() if "stopped at step 0 of 20" in line]
    assert len(stopped) == 1, done.stderr[-2000:]
    assert ("a stop asked of another process of the run" in stopped[0]) == (signalled == "1")
    assert "--resume" in stopped[0]


SBATCH = Path(__file__).resolve().parents[1] / "examples" / "slurm" / "pretrain.sbatch"


@pytest.mark.parametrize("summary,status,requeued", [
    ({"completed": False}, 1, True),  # stopped (pre-emption, the time limit): requeued
    ({"completed": True}, 0, False),
    ({"completed": False, "diverged": True}, 1, False),  # resuming would repeat its non-finite steps
    (None, 1, False),  # an error: no summary
    ("before", 1, False),  # a summary of an earlier job, none of this one's: an error too
], ids=["stopped", "completed", "diverged", "error", "earlier-summary"])
def test_the_slurm_example_requeues_a_stopped_run_alone(tmp_path, summary, status, requeued):
    """examples/slurm/pretrain.sbatch reads summary.json, not torchrun's status (1 whatever its workers
    returned), to requeue: run with srun and scontrol stand-ins, which record their arguments."""
    bin_dir, out = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    out.mkdir()
    if summary == "before":
        (out / "summary.json").write_text(json.dumps({"completed": False}))
        os.utime(out / "summary.json", (time.time() - 3600, time.time() - 3600))
    write = (f"echo {json.dumps(json.dumps(summary))} > {out}/summary.json; " if isinstance(summary, dict) else "")
    stubs = {"srun": f'echo "$@" > {tmp_path}/srun.args; {write}exit {status}',
             "scontrol": f'[ "$1" = show ] && echo node1 || echo "$@" >> {tmp_path}/scontrol.calls'}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), "DATA": str(tmp_path),
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_ID": "42", "SLURM_NNODES": "1"}
    done = subprocess.run(["bash", str(SBATCH), "--set", "train.epochs=1"], env=env, capture_output=True, text=True)
    assert done.returncode == status, done.stderr
    calls = (tmp_path / "scontrol.calls").read_text().split("\n") if (tmp_path / "scontrol.calls").exists() else []
    assert ("requeue 42" in calls) == requeued, calls
    args = (tmp_path / "srun.args").read_text()
    assert "--resume --set train.epochs=1" in args and f"--out {out}" in args and "--rdzv_id 42" in args
