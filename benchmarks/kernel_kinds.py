"""Where a training step's device time goes, by kind of work: what bounds its MFU.

A profiled step's kernels (CUDA), or its ATen operators (CPU, self time), grouped by the kind of work their
names say they do: the compute-bound kinds (matmul, attention, convolution), the memory-bound ones (Inductor's
fused kernels, norms, copies, the optimizer and EMA, eager element-wise work) and the time no kernel runs (the
step's wall time less its kernels': launch and host overhead). With the step's FLOPs by the same kinds
(torch.utils.flop_counter) each compute kind's achieved FLOP/s follows, against the device's matmul peak.

FLOPs are the model's (as MFU counts them): a fused attention's backward without the scores it recomputes
(torch's counter includes them); on a CPU the fused attention operator is counted with torch's formulas for the
GPU's (its counter has none for it), and the kernels of a compiled region are not ATen operators: their time
counts as no kernel running.

Used by `throughput.py --profile` and `profile_step.py`; importable from scripts run in this folder:

    prof, wall = profiled(step, batches, device)
    rows = where_time_goes(prof, wall, step_s, device, flops_by_kind(step, batch), peak_flops)
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

# (kind, pattern on the lower-cased kernel or operator name); the first match wins. Inductor's generated
# element-wise and reduction kernels come first: their names list the ops they fused (a convolution's bias,
# the copies SDPA's strides ask for), which are not the compute kinds' work. Attention and convolution kernels
# built on GEMM templates (cutlass, implicit GEMM, Inductor's `triton_tem` templates) are named for what they
# compute, before the remaining GEMMs.
KINDS = [
    ("host to device", r"htod"),
    ("fused by Inductor", r"\btriton_(poi|red|per)_"),
    ("attention", r"attention|flash|fmha|sdpa"),
    ("convolution", r"conv|fprop|dgrad|wgrad|winograd|scudnn|nchwtonhwc|nhwctonchw"),
    ("matmul", r"gemm|gemv|nvjet|cutlass|xmma|cublas|splitk|triton_tem|\b(mm|addmm|bmm|baddbmm|matmul|linear)\b"),
    ("optimizer and EMA", r"multi_tensor|foreach|adam|lerp"),
    ("norm", r"layer_norm|group_norm|batch_norm|rms_norm|moments|welford|gammabeta|\bbn_(fw|bw)"),
    ("upsample", r"upsample|pixel_shuffle"),
    ("copy and layout", r"copy|memcpy|memset|fill|\bcat\b|catarray|index|gather|scatter|clone|permute|transpose"),
]
OTHER = "other element-wise and reductions"
COMPUTE = ("matmul", "attention", "convolution")
IDLE = "no kernel running"
_PATTERNS = [(kind, re.compile(pattern)) for kind, pattern in KINDS]


def kind_of(name: str) -> str:
    """The kind of work a CUDA kernel's or an ATen operator's name says it does (`OTHER` when none)."""
    low = name.lower()
    return next((kind for kind, pattern in _PATTERNS if pattern.search(low)), OTHER)


def profiled(step: Callable[[Any], None], batches: Iterator[Any], device: torch.device,
             steps: int = 2) -> tuple[torch.profiler.profile, float]:
    """(the profile of `steps` steps, their wall seconds per step): host operators, and on a GPU its kernels."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        if cuda:
            torch.cuda.synchronize(device)
        wall = (time.perf_counter() - start) / steps
    return prof, wall


def seconds_by_kind(prof: torch.profiler.profile, device: torch.device, steps: int = 2) -> dict[str, float]:
    """Seconds per step by kind in a profile of `steps` steps (`profiled`): each CUDA kernel's device time on a
    GPU, each ATen operator's self time on a CPU (the host's work between operators is left out)."""
    cuda = device.type == "cuda"
    found: dict[str, float] = {}
    for event in prof.key_averages():
        if getattr(event, "is_user_annotation", False):
            continue  # record_function ranges (the optimizer's step...) projected on the GPU: not kernels
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue  # host-side operators and runtime calls
            us = event.self_device_time_total
        else:
            if not event.key.startswith("aten::"):
                continue  # Python, autograd and optimizer ranges: their operators are counted themselves
            us = event.self_cpu_time_total
        kind = kind_of(event.key)
        found[kind] = found.get(kind, 0.0) + us / 1e6 / steps
    if cuda and not found:
        raise RuntimeError("the profiler recorded no CUDA kernel (is CUPTI available to this process?)")
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """The model's FLOPs of a fused attention's backward: torch's formula less the scores it recomputes
    (query @ key^T), which MFU, as PaLM defines it, leaves out: the backward then counts twice the forward."""
    b, heads, length, dim = query
    return sdpa_backward_flop_count(grad_out, query, key, value) - 2 * b * heads * length * key[2] * dim


# fused attention as the model's FLOPs count it: on a CPU torch's counter has no formula (it counts the GPU
# kernels'), and on either its backward formula includes the recomputed scores. The same formulas, on the same
# arguments' shapes (query, key, value [B, heads, L, E]; the backward's grad first)
_aten = torch.ops.aten
MODEL_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    **{op: _attention_backward for op in (_aten._scaled_dot_product_flash_attention_for_cpu_backward,
                                          _aten._scaled_dot_product_flash_attention_backward,
                                          _aten._scaled_dot_product_efficient_attention_backward,
                                          _aten._scaled_dot_product_cudnn_attention_backward)},
}


def flops_by_kind(step: Callable[[Any], None], batch: Any) -> dict[str, int]:
    """The model's FLOPs of one step by kind, as torch.utils.flop_counter counts them (matmuls, attention,
    convolutions), but for fused attention's backward (`MODEL_ATTENTION`)."""
    counter = FlopCounterMode(display=False, custom_mapping=MODEL_ATTENTION)
    with counter:
        step(batch)
    found: dict[str, int] = {}
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        kind = kind_of(str(op))  # "aten.mm", "aten._scaled_dot_product_flash_attention", ...
        found[kind] = found.get(kind, 0) + int(flops)
    return found


def where_time_goes(prof: torch.profiler.profile, profiled_s: float, step_s: float, device: torch.device,
                    flops: dict[str, int] | None = None,
                    peak_flops: float | None = None) -> dict[str, dict[str, float | None]]:
    """A profile of 2 steps (`profiled`, whose steps took `profiled_s` each) by kind, against a step's wall time:
    `step_s`, the step timed without the profiler, on a GPU (profiling slows the host's launches, not the
    kernels); on a CPU `profiled_s` (the operators' self times include the profiler's overhead). See `bound`."""
    return bound(seconds_by_kind(prof, device), step_s if device.type == "cuda" else profiled_s, flops, peak_flops)


def bound(seconds: dict[str, float], step_s: float, flops: dict[str, int] | None = None,
          peak_flops: float | None = None) -> dict[str, dict[str, float | None]]:
    """Each kind's share of the step's wall time `step_s`, with `IDLE` for what the kinds leave; for the
    compute kinds with `flops`, their achieved TFLOP/s inside their own kernels and its fraction of `peak_flops`
    (the measured matmul peak). Kernels longer than the step together (overlapping streams, or a profile that
    is off) leave a negative `IDLE`, reported as it is with a warning."""
    rows: dict[str, dict[str, float | None]] = {}
    for kind, sec in seconds.items():
        achieved = flops.get(kind, 0) / sec if flops and kind in COMPUTE and sec > 0 else None
        rows[kind] = {"ms": sec * 1e3, "share": sec / step_s,
                      "tflops_per_s": achieved / 1e12 if achieved else None,
                      "of_peak": achieved / peak_flops if achieved and peak_flops else None}
    idle = step_s - sum(seconds.values())
    if idle < 0:
        print(f"warning: the kernels take {-idle * 1e3:.2f} ms more than the step's {step_s * 1e3:.2f} ms "
              "(streams overlap, or the profile and the timing disagree)", file=sys.stderr)
    rows[IDLE] = {"ms": idle * 1e3, "share": idle / step_s, "tflops_per_s": None, "of_peak": None}
    return rows


def format_bound(name: str, rows: dict[str, dict[str, float | None]]) -> str:
    """A table of `bound`'s rows, one line per kind."""
    lines = [f"{name}: where a step's time goes"]
    for kind, r in rows.items():
        rate = (f"  {r['tflops_per_s']:7.3g} TFLOP/s" if r["tflops_per_s"] else "")
        rate += f" ({r['of_peak']:.0%} of the matmul peak)" if r["of_peak"] else ""
        lines.append(f"  {kind:<36}{r['ms']:9.2f} ms {r['share']:6.1%}{rate}")
    return "\n".join(lines)
