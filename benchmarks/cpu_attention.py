"""timm's two attention paths on a CPU: PyTorch's fused scaled_dot_product_attention against the unfused matrix
products and softmax (`fused_attn=False`), for training (forward + backward) and inference, in bf16 autocast
and fp32; and how close each is to an fp64 reference.

    PYTHONPATH=src python benchmarks/cpu_attention.py [--rounds 5] [--out result.json]

Shapes: one attention module as the CPU presets and ImageNet-size ViTs call it (batch x tokens x width,
heads). The two paths run interleaved, round after round; medians. Numerics: the pico ViT of the default
preset on a batch of 64 random 28 px images; the relative L2 error of its output and of all its parameters'
gradients against the same model in fp64. This decides `repre.models.attention.unfused_pays`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import timm
import torch
from timm.layers import Attention

from repre.models.backbone import Backbone, resolve_arch

SHAPES = {  # name: (batch, tokens, width, heads)
    "pico ViT, 28 px (fmnist presets)": (256, 50, 128, 4),
    "pico ViT, 12 px local crop (DINO preset)": (512, 10, 128, 4),
    "ViT-S/16 at 224": (32, 197, 384, 6),
    "ViT-S/16 at 448": (4, 785, 384, 6),
}


def step_ms(attn: Attention, x: torch.Tensor, train: bool, bf16: bool, reps: int = 5) -> float:
    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
            y = attn(x)
        if train:
            y.float().sum().backward()

    once()
    start = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - start) / reps * 1e3


def speed(rounds: int) -> list[dict]:
    rows = []
    for name, (b, n, d, h) in SHAPES.items():
        torch.manual_seed(0)
        attn, x = Attention(d, num_heads=h), torch.randn(b, n, d, requires_grad=True)
        for train in (True, False):
            for bf16 in (True, False):
                times = {True: [], False: []}
                for _ in range(rounds):
                    for fused in (True, False):
                        attn.fused_attn = fused
                        times[fused].append(step_ms(attn, x, train, bf16))
                fused_ms, unfused_ms = statistics.median(times[True]), statistics.median(times[False])
                rows.append({"shape": name, "batch": b, "tokens": n, "width": d, "heads": h,
                             "mode": "train" if train else "inference", "precision": "bf16" if bf16 else "fp32",
                             "fused_ms": fused_ms, "unfused_ms": unfused_ms,
                             "fused_over_unfused": fused_ms / unfused_ms})
                print(f"{name:<42} {rows[-1]['mode']:<9} {rows[-1]['precision']}: fused {fused_ms:7.1f} ms, "
                      f"unfused {unfused_ms:7.1f} ms, fused / unfused {fused_ms / unfused_ms:.2f}", flush=True)
    return rows


def gradients(model: Backbone, x: torch.Tensor, w: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled output [B, D], all gradients flat) of a linear read-out of the pooled embedding, in float64."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pooled, _ = model(x)
    (pooled.to(w.dtype) * w).sum().backward()
    return pooled.detach().double(), torch.cat([p.grad.flatten().double() for p in model.parameters()])


def numerics() -> list[dict]:
    def build(fused: bool, dtype: torch.dtype) -> Backbone:
        torch.manual_seed(0)
        model = Backbone(*resolve_arch("vit_pico_patch4", 28, 0.0, {})).to(dtype)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused
        return model

    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(64, 3, 28, 28, generator=gen), torch.randn(64, 128, generator=gen)
    ref_out, ref_grad = gradients(build(False, torch.float64), x.double(), w.double(), False)
    rows = []
    for bf16 in (False, True):
        for fused in (True, False):
            out, grad = gradients(build(fused, torch.float32), x, w, bf16)
            rows.append({"path": "fused" if fused else "unfused", "precision": "bf16 autocast" if bf16 else "fp32",
                         "output_rel_err": float((out - ref_out).norm() / ref_out.norm()),
                         "grad_rel_err": float((grad - ref_grad).norm() / ref_grad.norm())})
            print(f"{rows[-1]['path']:<8} {rows[-1]['precision']:<14} against fp64: output "
                  f"{rows[-1]['output_rel_err']:.2e}, gradients {rows[-1]['grad_rel_err']:.2e}", flush=True)
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent)
    return done.stdout.strip() or None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="write the JSON here too")
    args = p.parse_args()
    result = {"machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "timm": timm.__version__},
              "date": time.strftime("%Y-%m-%d"), "commit": commit(),
              "numerics": numerics(), "speed": speed(args.rounds)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
