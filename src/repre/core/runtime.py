"""Device and precision of a run, and the process-wide settings it changes while it runs."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from repre.config import Config, TrainConfig
from repre.core import compat, dist, launch
from repre.errors import UserError

log = logging.getLogger("repre")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# the CPU features with bf16 arithmetic (dot products, matrix tiles): x86's and Arm's names
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


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


class LossScaler(torch.amp.GradScaler):
    """fp16's loss scaling (`torch.amp.GradScaler`, disabled in fp32 and bf16) with its scale kept at or above
    `FLOOR` (as DeepSpeed's `min_loss_scale`, commonly 1). GradScaler halves its scale at every step whose
    gradients overflow and has no floor: after about 140 such steps with no long good stretch between them (a
    run of non-finite steps) the scale reaches 0, its inverse inf, and unscaling makes finite gradients inf or
    NaN after its own overflow check has passed them: the optimizer writes NaN into the weights. At the floor,
    an overflow is no longer the scale's: pre-training counts it as a non-finite gradient."""

    FLOOR = 1.0

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt.device.type, enabled=rt.dtype == torch.float16)
        self.device = rt.device

    def current(self) -> torch.Tensor:
        """The scale as a 0-d float tensor on the device, read without a host sync (`get_scale()` syncs)."""
        return self.scale(torch.ones((), device=self.device))

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        super().update(new_scale)
        if self.is_enabled():  # on the device: no host sync
            super().update(self.current().clamp(min=self.FLOOR))


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


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """This CPU's features: torch.cpu.get_capabilities() (recent PyTorch), else Linux's cpuinfo
    (x86's flags, Arm's Features); None where neither tells."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return frozenset(k for k, v in capabilities().items() if v is True)
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (bf16 autocast then about 2x faster than fp32): oneDNN runs it,
    and the CPU has bf16 instructions (AVX512-BF16, AMX-BF16, Arm's BF16), where its features can be read."""
    flags = cpu_flags()
    return compat.onednn_has_bf16() and (flags is None or bool(flags & BF16_FLAGS))


def pick_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the hardware runs it natively (CUDA with bf16, CPUs with bf16 instructions:
    `cpu_has_bf16`), else fp32.
    bf16 or fp16 asked of a CPU without native bf16 is granted with a warning: it runs emulated."""
    if name != "auto":
        if name != "fp32" and device.type == "cpu" and not cpu_has_bf16() and launch.launch_rank() == 0:
            log.warning("train.precision=%s on a CPU without bf16 instructions (AVX512-BF16, AMX-BF16 or Arm's "
                        "BF16): emulated, many times slower than fp32 (15x on an AVX2 CPU, docs/results.md); "
                        "train.precision=auto picks fp32 here", name)
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def setup_runtime(cfg: TrainConfig, join_group: bool = False) -> Runtime:
    """The device and precision of train.device and train.precision. `join_group`: under a launcher (torchrun)
    join its process group first, the device then this process's (`dist.init_from_env`)."""
    device = pick_device(cfg.device)
    if join_group:
        device = dist.init_from_env(device)
    return Runtime(device=device, precision=pick_precision(cfg.precision, device))


COMPILE_GRAPHS = 32  # static graphs per compiled unit: Swin-T has 4 stages x 2 shifts x (online, momentum)
GRAD_STRIDES_WARNING = "Grad strides do not match bucket view strides"  # DDP's (torch's reducer.cpp)


@contextmanager
def run_settings(cfg: Config, device: torch.device, cuda_used_before: bool = False) -> Iterator[None]:
    """Every process-wide setting a run changes, set on entry and put back on exit, whatever ends the block.

    - train.compile: Dynamo's graphs per compiled unit raised to COMPILE_GRAPHS (`compile_units`); with the
      loss-balance diagnostics, compiled backward graphs that run again on one forward (they take each loss's
      gradient from the step's graph before its backward); DDP's "grad strides do not match bucket view
      strides" warning silenced: Inductor gives a 1x1 convolution's weight gradient (the decoder's) other
      strides on its size-1 dimensions, which address no memory, so the layouts are the same and DDP's copy
      into its bucket is the one it makes anyway (tests/test_compile.py checks that no other stride differs,
      on a GPU too where the suite runs on one).
    - train.deterministic: PyTorch's deterministic algorithms (an operation without one raises), cuBLAS with a
      fixed workspace, no cuDNN autotuning, and with train.compile Inductor's deterministic mode. The same run
      then gives the same bits on the same machine, GPU included, so a resumed run equals an uninterrupted one
      there too. `cuda_used_before`: CUDA ran before this run (cuBLAS may keep its first workspace: a warning).
    """
    with contextlib.ExitStack() as stack:
        if cfg.train.compile:
            stack.enter_context(compat.compiled_graphs_per_unit(COMPILE_GRAPHS))
            if cfg.measures_loss_balance:
                stack.enter_context(compat.reusable_compiled_backward())
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", GRAD_STRIDES_WARNING, UserWarning)
        # what a GPU cannot do deterministically is refused earlier (`repre.builder.check_builds`)
        if cfg.train.deterministic:
            stack.enter_context(_deterministic(device, cuda_used_before))
            if cfg.train.compile:
                stack.enter_context(compat.inductor_deterministic())
        yield


@contextmanager
def _deterministic(device: torch.device, cuda_used_before: bool) -> Iterator[None]:
    """PyTorch's deterministic algorithms, cuBLAS's fixed workspace, no cuDNN autotuning; then put back."""
    workspace = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if workspace and device.type == "cuda" and cuda_used_before:
        log.warning("train.deterministic: CUDA was in use before this run; cuBLAS may keep its first workspace. "
                    "Set CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python for bitwise results")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    if workspace:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # read when cuBLAS first runs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if workspace:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextmanager
def seeded(seed: int, rt: Runtime) -> Iterator[None]:
    """Run a block from a fixed global RNG state (CPU and the CUDA device), restoring the caller's after."""
    devices = [rt.device.index or 0] if rt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
