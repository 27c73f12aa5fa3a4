"""Device and precision of a run."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from repre.config import Config, TrainConfig
from repre.errors import UserError

log = logging.getLogger("repre")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def amp(self) -> bool:
        return self.precision != "fp32"

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (then bf16 autocast is about 2x faster than fp32 on CPU)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def setup_runtime(cfg: TrainConfig) -> Runtime:
    device = pick_device(cfg.device)
    return Runtime(device=device, precision=pick_precision(cfg.precision, device))


def make_deterministic(cfg: Config, device: torch.device) -> Callable[[], None]:
    """train.deterministic: PyTorch's deterministic algorithms (an operation without one raises), cuBLAS with a
    fixed workspace, no cuDNN autotuning, and with train.compile Inductor's deterministic mode. The same run then
    gives the same bits on the same machine, GPU included, so a resumed run equals an uninterrupted one there
    too. The settings are process-wide: returns a function that puts the previous ones back."""
    if device.type == "cuda" and cfg.recon.enabled and cfg.recon.upsample != "nearest":
        raise UserError(f"train.deterministic=true on a GPU needs recon.upsample=nearest: PyTorch has no "
                        f"deterministic CUDA backward for {cfg.recon.upsample} upsampling")
    if device.type == "cuda" and cfg.data.local_crops > 0:
        raise UserError("train.deterministic=true on a GPU needs data.local_crops=0: the local crops resample the "
                        "position embeddings bicubically, which has no deterministic CUDA backward in PyTorch")
    workspace = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if workspace and device.type == "cuda" and torch.cuda.is_initialized():
        log.warning("train.deterministic: CUDA was in use before this run; cuBLAS may keep its first workspace. "
                    "Set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python for bitwise results")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    inductor = None  # (Inductor's config, its previous setting), where it has the setting
    if cfg.train.compile:
        import torch._inductor.config as config  # only for compiled deterministic runs

        if hasattr(config, "deterministic"):
            inductor = (config, config.deterministic)
            config.deterministic = True
    if workspace:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # read when cuBLAS first runs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if workspace:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if inductor is not None:
            inductor[0].deterministic = inductor[1]

    return restore
