"""What a training step computes and moves, RePre against its baseline: FLOPs and bytes per image, counted.

    PYTHONPATH=src python benchmarks/step_traffic.py [--preset in1k-vit-s16-mocov3-repre] [--set KEY=VALUE ...]
                                                   [--compare KEY=VALUE[&KEY=VALUE] ...] [--at 256] [--top 8]

One training step (trainer.train_step: forward, backward, optimizer, momentum update) of the preset on
synthetic images, eager, under bf16 autocast, with every operator PyTorch dispatches tallied: its FLOPs as the
model's (torch.utils.flop_counter: matmuls, convolutions, attention; a fused attention's backward without the
scores it computes again, `kernel_kinds.MODEL_ATTENTION`) and the bytes of the tensors it reads and writes
(views and reshapes move nothing and are skipped). Rows: the preset with the branch, each --compare variant of
it, and the baseline (recon.enabled=false); each with its ratio to the baseline.

Memory: the weights (fp32), the trained ones' gradients and AdamW moments, and the distinct storages autograd
saves for the backward (the activations alive when the forward ends, the weights' bf16 copies among them): what
sets a step's peak above the allocator's slack and the backward's transients. Eager: a compiled step saves
fewer activations (the partitioner recomputes element-wise work in the backward), in both rows.

A step's counts are a part that grows with the batch (activations) and a fixed part (the optimizer, the
momentum update, the weights' casts to bf16). Each row is counted at batches of 2 and 4 images and the two
parts solved for; the table gives them at --at images a process (the GPU measurements' batch: 256).

Why bytes: on a GPU an eager operator that is not a matrix product streams its inputs and outputs through
memory, so a step's time there follows its FLOPs for the matmuls and its bytes for the rest. The counts are
eager ones: torch.compile fuses chains of element-wise operators and moves fewer bytes, in both rows. The
attention runs the fused kernel as on a GPU (a CPU training step in bf16 would run timm's unfused path).
Counting needs no GPU and gives the same numbers on any machine. Prints a table, then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import nullcontext

import torch
from kernel_kinds import MODEL_ATTENTION  # this folder's modules
from profile_step import trainer_step
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

import repre.engine.trainer


class Traffic(TorchDispatchMode):
    """Bytes read and written by each dispatched operator (summed by operator name); views count nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.read: Counter[str] = Counter()
        self.written: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            name = func.overloadpacket.__name__
            self.read[name] += _bytes(tree_flatten((args, kwargs))[0])
            self.written[name] += _bytes(tree_flatten(out)[0])
        return out


def _bytes(values: list) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


class Saved:
    """The bytes autograd keeps for the backward: every distinct storage saved, parameters excluded (the
    activations alive when the forward ends, which set a step's peak memory above the weights and optimizer
    state)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def state_bytes(model: torch.nn.Module) -> int:
    """The weights (fp32), and for the trained ones a gradient and AdamW's two moments: a step's memory that
    does not grow with the batch (the bf16 copies autocast makes of the weights are among the saved bytes)."""
    return sum(p.numel() * 4 * (4 if p.requires_grad else 1) for p in model.parameters())


def count_step(preset: str, overrides: list[str]) -> dict[str, float]:
    """One step's FLOPs, bytes moved (read + written; in total and by operator, "op:NAME") and bytes saved for
    the backward."""
    torch.manual_seed(0)
    trainer, step, _ = trainer_step(preset, overrides)
    step()  # the first step builds the optimizer's state: count a step like every later one
    flops = FlopCounterMode(display=False, custom_mapping=MODEL_ATTENTION)
    traffic, saved = Traffic(), Saved(trainer.model)
    with flops, traffic, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        step()
    moved = traffic.read + traffic.written
    return {"flop": flops.get_total_flops(), "bytes": sum(moved.values()), "saved": saved.bytes,
            "state": state_bytes(trainer.model), "bytes_written": sum(traffic.written.values()),
            **{f"op:{k}": v for k, v in moved.items()}}


def count(preset: str, overrides: list[str], at: int) -> dict:
    """FLOPs and bytes of a step of `at` images, from steps of 2 and 4: per image (the slope) and fixed."""
    small, large = (count_step(preset, [*overrides, f"train.batch_size={b}"]) for b in (2, 4))
    keys = small.keys() | large.keys()
    per_image = {k: (large.get(k, 0) - small.get(k, 0)) / 2 for k in keys}
    fixed = {k: small.get(k, 0) - 2 * per_image[k] for k in keys}
    at_batch = {k: fixed[k] + at * per_image[k] for k in keys}
    ops = {k[3:]: v / at / 2**20 for k, v in at_batch.items() if k.startswith("op:")}
    return {"gflop_per_image": at_batch["flop"] / at / 1e9, "mb_per_image": at_batch["bytes"] / at / 2**20,
            "mb_written_per_image": at_batch["bytes_written"] / at / 2**20,
            "fixed_gflop": fixed["flop"] / 1e9, "fixed_mb": fixed["bytes"] / 2**20,
            "saved_mb_per_image": per_image["saved"] / 2**20, "saved_fixed_mb": fixed["saved"] / 2**20,
            "state_mb": small["state"] / 2**20,
            "memory_mb": (small["state"] + at_batch["saved"]) / 2**20,
            "mb_by_op": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="in1k-vit-s16-mocov3-repre")
    p.add_argument("--at", type=int, default=256, help="the batch (images a process) the table is given at")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[&KEY=VALUE]",
                   help="a RePre row with these overrides as well (repeatable)")
    p.add_argument("--top", type=int, default=8, help="operators listed by the bytes RePre adds")
    args = p.parse_args()
    # the fused attention kernel, as a GPU step runs it (not the unfused path of CPU training in bf16)
    repre.engine.trainer.training_attention = lambda *a: nullcontext()
    base = ["train.precision=bf16", "train.compile=false", *args.overrides]
    rows = {"repre": base, **{f"repre {c}": base + c.split("&") for c in args.compare},
            "baseline": base + ["recon.enabled=false"]}
    counts = {}
    for name, overrides in rows.items():
        counts[name] = count(args.preset, overrides, args.at)
        print(f"counted {name}", file=sys.stderr, flush=True)
    ref = counts["baseline"]
    print(f"{args.preset} at {args.at} images a step, per image: GFLOP, MB read + written (eager, bf16 autocast); "
          "a step's memory (weights, gradients, AdamW's moments and the bytes saved for the backward); ratios to "
          "the baseline")
    for name, c in counts.items():
        c["flop_ratio"] = c["gflop_per_image"] / ref["gflop_per_image"]
        c["bytes_ratio"] = c["mb_per_image"] / ref["mb_per_image"]
        c["memory_ratio"] = c["memory_mb"] / ref["memory_mb"]
        print(f"{name:<44}{c['gflop_per_image']:8.2f} GFLOP {c['mb_per_image']:8.1f} MB   x{c['flop_ratio']:.3f} "
              f"FLOP  x{c['bytes_ratio']:.3f} bytes   {c['memory_mb']:8.0f} MB memory  x{c['memory_ratio']:.3f}")
    for name, c in counts.items():
        if name == "baseline":
            continue
        added = {k: v - ref["mb_by_op"].get(k, 0.0) for k, v in c["mb_by_op"].items()}
        top = sorted(added.items(), key=lambda kv: -kv[1])[:args.top]
        print(f"  {name}, MB added per image: " + ", ".join(f"{k} {v:.1f}" for k, v in top))
    print(json.dumps({"benchmark": "step_traffic", "preset": args.preset, "overrides": base, "at": args.at,
                      "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": counts}))


if __name__ == "__main__":
    main()
