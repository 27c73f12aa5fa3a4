"""Shared fixtures: tiny configs on generated data, one session-scoped tiny run, image folders."""

from __future__ import annotations

import atexit
import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repre.cli import main
from repre.config import load_config

# the README runs the tests in pytest-xdist workers, one per core this process may use: each takes its share (at
# most the 2 threads these tiny models gain from)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
torch.set_num_threads(max(1, min(2, CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
# one folder for what the tests leave outside their tmp_path: repre's cache (never the user's ~/.cache) and the
# temporary files of the processes they start (torchrun's, its workers'); removed when the tests end
SCRATCH = tempfile.mkdtemp(prefix="repre-tests-")
os.environ.setdefault("REPRE_CACHE", os.path.join(SCRATCH, "cache"))
os.environ["TMPDIR"] = SCRATCH  # child processes only: this one's tempfile already chose its folder
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


# what a bitwise comparison of two runs needs on a GPU: the deterministic algorithms, and with them nearest x2
# steps and no local crops (CPU runs keep the defaults)
BITWISE = (["train.deterministic=true", "recon.upsample=nearest", "data.local_crops=0"] if torch.cuda.is_available()
           else [])

TINY = [
    "data.name=synthetic",
    "data.image_size=16",
    "data.synthetic_train=64",
    "data.synthetic_test=32",
    "model.arch=vit_tiny_patch16_224",
    "model.kwargs={patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2}",
    "method.mocov3.mlp_dim=64",
    "method.moby.mlp_dim=64",
    "method.dino.hidden_dim=64",
    "method.mocov3.proj_dim=32",
    "method.moby.proj_dim=32",
    "method.dino.bottleneck_dim=32",
    "recon.width=16",
    "train.batch_size=16",
    "train.max_steps=4",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.precision=fp32",
    "train.num_workers=0",
    "train.progress=false",
    "eval.batch_size=64",
]


def tiny_config(*extra: str):
    return load_config("fmnist-mocov3-repre", TINY + list(extra))


def pretrain_args(out: Path, *extra: str) -> list[str]:
    """`repre pretrain --out OUT` on the tiny config plus `extra` overrides."""
    args = ["pretrain", "--out", str(out)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Call `repre` in-process; returns (exit status, stdout)."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    """One ~20-step run through the CLI, shared by the eval and output tests."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    args = ["pretrain", "--out", str(out)]
    for item in TINY + ["train.max_steps=20", "train.checkpoint_every=10", "train.log_every=5",
                        "train.eval_every=10", "train.diagnose_every=10"]:
        args += ["--set", item]
    code, stdout = run_cli(args)
    assert code == 0, stdout
    return out, last_json(stdout)


def save_png(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train/ and val/ with two classes of random 20x24 RGB images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6)):
        for c in ("cat", "dog"):
            for i in range(n):
                base = 60 if c == "cat" else 190
                arr = np.clip(rng.normal(base, 30, size=(20, 24, 3)), 0, 255).astype(np.uint8)
                save_png(tmp_path / "imgs" / split / c / f"{i}.png", arr)
    return tmp_path / "imgs"


@pytest.fixture
def repre_log(caplog, monkeypatch):
    """caplog for the "repre" logger (the CLI stops it propagating to the root logger, where caplog listens),
    with the warnings said once a process (of a file, of a shard's members) not yet said: a test sees its own,
    whatever the tests before it met in this process."""
    import logging

    from repre.cli import setup_logging
    from repre.data import folder, stream

    monkeypatch.setattr(folder, "_said", set())
    monkeypatch.setattr(stream, "_said", set())
    setup_logging()  # what the CLI does on its first call; then let records reach caplog
    monkeypatch.setattr(logging.getLogger("repre"), "propagate", True)
    caplog.set_level("INFO", logger="repre")
    return caplog


@pytest.fixture
def loader_batches(monkeypatch) -> list[dict[str, tuple[str, tuple[int, ...]]]]:
    """Each batch of the pre-training loader as the trainer hands it to `PretrainData.to_device`, before the
    stages left for the device run: {key: (dtype, shape)} of its tensors. Which keys cross tells where each
    stage ran (uint8 "views" and "photo": the photometric stage left; "pixels", "jpeg", "boxes" and no "views":
    the crops and decoding too)."""
    from repre.data.pipeline import PretrainData

    seen: list[dict[str, tuple[str, tuple[int, ...]]]] = []
    to_device = PretrainData.to_device

    def record(self, batch):
        seen.append({k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in batch.items()
                     if isinstance(v, torch.Tensor)})
        return to_device(self, batch)

    monkeypatch.setattr(PretrainData, "to_device", record)
    return seen


# settings and data that several test modules share

LOCAL_AUG = ["aug.blur_prob=[1.0, 0.1, 0.5]", "aug.solarize_prob=[0.0, 0.2, 0.0]"]  # DINO's for its local crops
DINO_TINY = ["method.name=dino", "method.dino.out_dim=64", "method.dino.student_temp=0.1", "method.momentum=0.996",
             "data.local_crops=2", "data.local_size=8", *LOCAL_AUG]


SWIN_TINY = ["method.name=moby", "model.arch=swin_pico_patch2_window4", "model.init=timm", "data.image_size=32",
             "model.kwargs={embed_dim: 16, depths: [1, 1, 1], num_heads: [1, 2, 4]}", "method.moby.queue_size=40",
             "recon.taps=3", "recon.out_stride=1"]


def write_idx(folder, images: np.ndarray, labels: np.ndarray, prefix: str):
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBIII", 0, 0, 8, 3, *images.shape) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.tobytes())


def png_bytes(seed: int, size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, shards: int, per_shard: int, classes: int = 3, labels: bool = True,
                 start: int = 0) -> list[int]:
    """Shards of PNG samples `k.png` (+ `k.cls`); returns the seeds of the images in order."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = []
    for s in range(shards):
        with tarfile.open(folder / f"part-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                seed = start + s * per_shard + i
                key = f"dir/sample{seed:05d}"
                add(tar, f"{key}.png", png_bytes(seed))
                if labels:
                    add(tar, f"{key}.cls", str(seed % classes).encode())
                seeds.append(seed)
    return seeds
