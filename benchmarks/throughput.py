"""Training throughput of a preset (the default one unless --preset): RePre vs baseline, real pipeline vs
pre-made tensors, vs lightly. Prints a table and each ratio, then, as its last stdout line, the whole result
as one JSON object (the files under benchmarks/results/ are these lines).

Each configuration runs in its own child process (so peak RSS is its own), interleaved A B C, C B A, A B C ...
over several rounds; the table reports medians, and each ratio also round by round (`paired_ratios`: on a
machine whose speed drifts, their median is the steadier estimate). Only ratios from the same run mean
anything: this machine's absolute speed varies by the hour.

    python benchmarks/throughput.py [--rounds 3] [--steps 20] [--warmup 4] [--preset fmnist-mocov3-repre]
    python benchmarks/throughput.py --configs repre --tree old=../old-worktree --tree new=.   # two commits
    python benchmarks/throughput.py --device cuda --method dino --arch vit_base_patch16_224 --image-size 224 \
        --batch-size 128 --configs repre-tensors,baseline-tensors --mfu

--compare KEY=VALUE (repeatable; several overrides joined by &) runs every configuration with that override as
well, as rows "NAME+KEY=VALUE" in the same interleaved rounds: a setting's cost as a ratio of one run.

--tree LABEL=DIR (repeatable) runs each configuration from the checkout in DIR as well (its own
benchmarks/throughput.py and src/, so each commit's own code and keys), as rows "NAME@LABEL" in the same
interleaved rounds: how a change moves throughput, measured side by side.

--in-process builds (and compiles) each configuration on pre-made batches (*-tensors, lightly) once, in this
process, and interleaves its rounds there: compiled GPU steps then cost one compilation a configuration, not one
a round; on a CPU a round's configurations run seconds apart, the steadiest ratio where the speed drifts. Each
configuration's peak CUDA memory is that of one of its steps beyond the configurations already resident; there
is no peak RSS (for CPU memory, the default child processes). --profile (with --in-process) adds where each
configuration's step time goes, by kind of kernel, and the compute kinds' FLOP/s (benchmarks/kernel_kinds.py).

--method picks the method's preset (fmnist-<method>-repre on CPU; with --device cuda the paper-scale one on
synthetic data unless --set data.root=... is given); --device, --arch, --image-size and --batch-size are
shorthands for --set train.device=, model.arch=, data.image_size=, train.batch_size=.

Configurations:
  repre            the default preset as `repre pretrain` runs it (data loader, workers, augmentation)
  baseline         the same with recon.enabled=false (plain MoCo v3)
  repre-tensors    the RePre training step on one pre-made batch of finished views, on the device before the
                   timer (no data loading, no copy; the stages data.device_stages=crops or decode leaves for
                   the device run each step): this machine's bound
  baseline-tensors the plain MoCo v3 step on one pre-made batch
  supervised-tensors  the same encoder trained with labels (method.name=supervised, a plain timm ViT step):
                   the reference point for the MFU of the self-supervised steps
  lightly          a MoCo-style assembly from lightly's parts around the same timm ViT, on pre-made tensors
                   (MoCoProjectionHead, BYOLPredictionHead, NTXentLoss: SimCLR's 2N-1-way loss, update_momentum)
  lightly-dino     with a DINO preset: the same DINO step from lightly's parts (DINOProjectionHead, DINOLoss,
                   update_momentum, the head's last-layer cancelling) on the same multi-crop tensors
  baseline-per-view-tensors, repre-per-view-tensors
                   with a MoCo v3 preset: its step with each view through the encoders on its own, as the
                   official code and lightly run them, where repre stacks both views into one batch
  repre-conv-laterals-tensors
                   the RePre step with the decoder's laterals as 1x1 convolutions on the tap maps copied to
                   contiguous NCHW in the autocast dtype (the decoder's path before its laterals projected a
                   ViT's channels-last maps as matmuls): what that change saved, in the same rounds
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ["repre", "baseline", "repre-tensors", "baseline-tensors", "lightly"]
OPTIONAL = ["supervised-tensors", "lightly-dino", "baseline-per-view-tensors", "repre-per-view-tensors",
            "repre-conv-laterals-tensors"]


def _trainer(preset: str, recon: bool, extra: list[str]):
    from repre.config import load_config
    from repre.engine.trainer import Trainer

    overrides = [f"recon.enabled={str(recon).lower()}", "train.progress=false", "eval.knn.enabled=false",
                 "train.diagnose_every=0", *extra]
    cfg = load_config(preset, overrides)
    return Trainer(cfg, Path(tempfile.mkdtemp(dir=_runs().name)) / "run")


@functools.cache
def _runs() -> tempfile.TemporaryDirectory:
    """The folder of this process's runs (their configs and locks; no checkpoint is written): removed at exit."""
    return tempfile.TemporaryDirectory(prefix="repre-throughput-")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_steps(step, batches, warmup: int, steps: int, ready: int = 0) -> float:
    """Seconds a step over `steps` steps after `warmup` (compilation happens there); the CUDA peak memory is
    counted from the timed steps on (compilation's temporaries left out). `ready`: the batches a loader holds
    ready after the warm-up (its workers' prefetch), taken before the timer, so that the timed steps wait on
    what the pipeline makes while they run, not on a stock it made during the warm-up."""
    import torch

    for _ in range(warmup):
        step(next(batches))
    for _ in range(ready):
        next(batches)
    _sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync()
    return (time.perf_counter() - start) / steps


def matmul_peak(device, dtype) -> float:
    """Measured dense matmul FLOP/s of this device at `dtype` (n x n x n products, best of 3 timings; n 8192 on
    a GPU, 2048 on a CPU, where 8192 would take minutes)."""
    import torch

    n, reps = (8192, 20) if device.type == "cuda" else (2048, 3)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(3):
        _sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n**3 / best


# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first name that the device's
# name contains wins (the PCIe and NVL parts before the SXM ones)
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.5, "H100": 989.4, "H200 NVL": 835.5, "H200": 989.4,
                         "A100": 312.0, "L40S": 362.1}


def datasheet_flops(device: str, precision: str) -> float | None:
    """The data sheet's dense bf16 FLOP/s of a known GPU; None for other devices and precisions."""
    if precision != "bf16":
        return None
    return next((tflops * 1e12 for name, tflops in DATASHEET_BF16_TFLOPS.items() if name in device), None)


def step_flops(step, batch) -> int:
    """FLOPs of one training step (forward and backward of every module, momentum encoder included) as
    torch.utils.flop_counter counts them: matmuls, convolutions and attention; element-wise work is not counted."""
    from kernel_kinds import flops_by_kind

    return sum(flops_by_kind(step, batch).values())


def _lightly_step(trainer):
    """A MoCo v3-like step built from lightly's parts, same encoder, same batch size and precision."""
    import copy

    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules.heads import BYOLPredictionHead, MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from repre.models.attention import training_attention

    cfg, rt = trainer.cfg, trainer.rt
    backbone = trainer.model.method.encoder.model
    d, hidden, out = backbone.num_features, cfg.method.mocov3.mlp_dim, cfg.method.mocov3.proj_dim
    projector = MoCoProjectionHead(d, hidden, out, num_layers=3, batch_norm=True)
    predictor = BYOLPredictionHead(out, hidden, out)
    m_backbone, m_projector = copy.deepcopy(backbone), copy.deepcopy(projector)
    deactivate_requires_grad(m_backbone), deactivate_requires_grad(m_projector)
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    loss_fn = NTXentLoss(temperature=cfg.method.mocov3.temperature)

    def step(batch):
        x1, x2 = batch["views"][:, 0], batch["views"][:, 1]
        with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp), \
                training_attention(backbone, rt.device, rt.dtype):  # the kernel of repre's training forward
            update_momentum(backbone, m_backbone, 0.99)
            update_momentum(projector, m_projector, 0.99)
            q1, q2 = predictor(projector(backbone(x1))), predictor(projector(backbone(x2)))
            with torch.no_grad():
                k1, k2 = m_projector(m_backbone(x1)), m_projector(m_backbone(x2))
            loss = loss_fn(q1.float(), k2.float()) + loss_fn(q2.float(), k1.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _lightly_dino_step(trainer):
    """DINO from lightly's parts: same encoder, head sizes, temperatures, multi-crop batch and precision."""
    import copy

    import torch
    from lightly.loss import DINOLoss
    from lightly.models.modules.heads import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from repre.models.attention import training_attention

    rt, m = trainer.rt, trainer.cfg.method.dino
    student = trainer.model.method.encoder.model

    def make_head():
        return DINOProjectionHead(student.num_features, m.hidden_dim, m.bottleneck_dim, m.out_dim,
                                  freeze_last_layer=1, norm_last_layer=m.norm_last_layer)

    head, teacher_head = make_head(), make_head()  # lightly's weight-normalized head cannot be deep-copied
    teacher_head.load_state_dict(head.state_dict())
    teacher = copy.deepcopy(student)
    deactivate_requires_grad(teacher), deactivate_requires_grad(teacher_head)
    loss_fn = DINOLoss(output_dim=m.out_dim, teacher_temp=m.teacher_temp, student_temp=m.student_temp,
                       center_momentum=m.center_momentum)
    opt = torch.optim.AdamW([*student.parameters(), *head.parameters()], lr=1e-4, weight_decay=0.04)

    def step(batch):
        views, local = batch["views"], batch["local_views"]
        globals_ = [views[:, 0], views[:, 1]]
        with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp), \
                training_attention(student, rt.device, rt.dtype):  # the kernel of repre's training forward
            update_momentum(student, teacher, 0.996)
            update_momentum(head, teacher_head, 0.996)
            with torch.no_grad():
                t_out = [teacher_head(teacher(v)).float() for v in globals_]
            s_out = [head(student(v)).float() for v in globals_ + list(local.unbind(1))]
            loss = loss_fn(t_out, s_out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        head.cancel_last_layer_gradients(0)
        opt.step()

    return step


def _per_view_forward(method):
    """MoCo v3's forward with each view through the online and momentum encoders on its own (batches of B, not
    one of 2B): the same loss and outputs, the official code's order of work."""
    import torch

    from repre.core.dist import gather, rank
    from repre.losses import mocov3_loss

    def forward(views, labels=None, local_views=None, taps=()):
        x1, x2 = views[:, 0], views[:, 1]
        (p1, m1), (p2, m2) = method.encoder(x1, taps), method.encoder(x2, taps)
        q1, q2 = method.predictor(method.projector(p1)), method.predictor(method.projector(p2))
        with torch.no_grad():  # the targets, updated before this forward (`Method.ema_then_forward`)
            k1, k2 = (method.momentum_projector(method.momentum_encoder(x)[0]) for x in (x1, x2))
        offset = rank() * views.shape[0]
        loss = (mocov3_loss(q1, gather(k2), method.temperature, offset)
                + mocov3_loss(q2, gather(k1), method.temperature, offset))
        maps = [torch.cat(pair) for pair in zip(m1, m2, strict=True)]  # [x1; x2] order, as the stacked forward's
        return method.outputs(loss, torch.cat([p1, p2]), maps, torch.cat([x1, x2]))

    return forward


def _conv_laterals(decoder) -> None:
    """The decoder's laterals as they were before the matmul path: every map copied to contiguous NCHW in the
    autocast dtype, then its 1x1 convolution and norm (instance attributes: the class's forward stays the
    other configurations')."""
    import torch

    def lateral_forward(conv, norm):
        def forward(x):
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            return norm(conv(x.to(dtype, memory_format=torch.contiguous_format).contiguous()))
        return forward

    for lateral in decoder.laterals:
        lateral.forward = lateral_forward(lateral[0], lateral[1])


def is_premade(name: str) -> bool:
    """Whether a configuration times its step on one pre-made batch (no data loader)."""
    return name.endswith("-tensors") or name.startswith("lightly")


def build(name: str, preset: str, overrides: list[str]):
    """(trainer, step(batch), batches) for one configuration: its Trainer, the step the configuration times, and
    the batches it reads (one pre-made batch repeated, or the real loader)."""
    from repre.data.pipeline import pretrain_loader

    premade = is_premade(name)
    # pre-made tensors: no worker process left running to compete for the cores
    extra = overrides + ["train.num_workers=0"] * premade + ["method.name=supervised"] * name.startswith("supervised")
    trainer = _trainer(preset, recon=name.startswith("repre"), extra=extra)
    # the pipeline configs augment where a run would (data.device_stages); pre-made tensors are finished views
    # (or, with data.device_stages=crops or decode set, packed images whose stages run on the device each step),
    # moved to the device once: no copy from the host in the timed steps
    loader = (pretrain_loader(trainer.cfg, trainer.data.source, 0, trainer.rt.pin_memory) if premade
              else trainer.data.loader(0, trainer.rt.pin_memory))
    batches = iter(loader)
    if premade:
        batches = itertools.repeat(trainer.data.move(next(batches)))
        del loader
    trainer.model.train()
    if "-per-view" in name:  # an instance attribute: the class's forward stays the other configurations'
        if trainer.cfg.method.name != "mocov3":
            raise ValueError(f"{name} needs a MoCo v3 preset, not {trainer.cfg.method.name}")
        trainer.model.method.forward = _per_view_forward(trainer.model.method)
    if "-conv-laterals" in name:
        _conv_laterals(trainer.model.branch.decoder)

    def repre_step(batch):
        with trainer.settings():  # what fit() sets: Dynamo's graph limit with train.compile, deterministic mode
            trainer.train_step(trainer.data.finish(batch) if premade else trainer.data.to_device(batch))
        trainer.state.step += 1

    step = {"lightly": _lightly_step, "lightly-dino": _lightly_dino_step}.get(name, lambda _: repre_step)(trainer)
    return trainer, step, batches


def row(name: str, trainer, sec: float, flops: int | None, peak: float | None, peak_cuda_mb: float | None,
        peak_rss_mb: float | None) -> dict:
    """One configuration's measurement, as the summary reads it."""
    import torch

    bs = trainer.cfg.train.batch_size
    return {
        "step_flops": flops,
        "device_peak_flops": peak,
        "mfu": flops / sec / peak if flops and peak else None,
        "config": name,
        "step_s": sec,
        "images_per_sec": bs / sec,
        "peak_rss_mb": peak_rss_mb,
        "peak_cuda_mb": peak_cuda_mb,
        "batch_size": bs,
        "precision": trainer.rt.precision,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if trainer.rt.device.type == "cuda" else trainer.rt.device.type,
    }


def child(name: str, preset: str, warmup: int, steps: int, overrides: list[str], mfu: bool) -> dict:
    import torch

    from repre.data.pipeline import PREFETCH
    from repre.data.workers import resolve_workers

    trainer, step, batches = build(name, preset, overrides)
    ready = 0 if is_premade(name) else resolve_workers(trainer.cfg.train.num_workers) * PREFETCH
    sec = _time_steps(step, batches, warmup, steps, ready)
    # the timed steps' peak, read before the FLOP count's step: under its dispatch mode a compiled module runs
    # eagerly, and an eager step's peak is another (a compiled one's is lower)
    cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    flops = peak = None
    if mfu:
        flops = step_flops(step, next(batches))
        peak = matmul_peak(trainer.rt.device, trainer.rt.dtype)
    return row(name, trainer, sec, flops, peak, cuda_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def in_round_order(items: list, r: int) -> list:
    """The configurations of round `r`: in their order, then reversed in the next round, so that no
    configuration always runs first (after the longest pause) or right after the same neighbour."""
    return items if r % 2 == 0 else items[::-1]


def in_process(names: list[tuple[str, str | None]], args: argparse.Namespace,
               failed: dict[str, str]) -> dict[str, list[dict]]:
    """Every configuration built and warmed up (compiled) once in this process, then timed in interleaved
    rounds: one compilation per configuration instead of one per round (what makes 3 rounds of compiled GPU
    steps affordable). A configuration's peak CUDA memory is that of one step after its warm-up, less what was
    allocated before it was built: the configurations built earlier stay resident and unchanged meanwhile
    (weights, gradients, optimizer states, queues), so it is what the step would hold alone; compilation's
    temporaries and the cuBLAS workspace (allocated before the first) are left out. No peak RSS: the process
    is shared. A configuration that fails is named in `failed`; after each round the summary so far is printed."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:  # the cuBLAS workspace, allocated once for all, before any configuration's `before`
        torch.ones(8, 8, device="cuda", dtype=torch.bfloat16) @ torch.ones(8, 8, device="cuda", dtype=torch.bfloat16)
    built = {}
    for name, extra in names:
        key = label(name, extra)
        try:
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
            trainer, step, batches = build(name, args.preset, args.overrides + (extra.split("&") if extra else []))
            for _ in range(args.warmup):
                step(next(batches))
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step(next(batches))
                torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
        except Exception as exc:  # noqa: BLE001 - the other configurations go on, as in the child mode
            failed[key] = f"{type(exc).__name__}: {exc}"[-3000:]
            print(f"configuration {key} failed ({failed[key]})", file=sys.stderr, flush=True)
            continue
        built[key] = (trainer, step, batches, peak_mb)
        print(f"built {key:<17} (warm-up {args.warmup} steps)", file=sys.stderr, flush=True)
    runs: dict[str, list[dict]] = {key: [] for key in built}
    for r in range(args.rounds):
        for key, (trainer, step, batches, peak_mb) in in_round_order(list(built.items()), r):
            sec = _time_steps(step, batches, 1, args.steps)  # one step back into the caches
            runs[key].append({**row(key, trainer, sec, None, None, peak_mb, None), "round": r})
            print(f"round {r + 1} {key:<17} {sec:7.3f} s/step", file=sys.stderr, flush=True)
        # what is done so far, as the last stdout line: a run stopped by a time limit keeps it
        print(json.dumps(summary(runs, names, args, failed, partial=True, mfu=False)), flush=True)
    if (args.mfu or args.profile) and built:
        count_and_profile(built, runs, names, args, failed)
    return runs


def count_and_profile(built: dict[str, tuple], runs: dict[str, list[dict]], names: list[tuple[str, str | None]],
                      args: argparse.Namespace, failed: dict[str, str]) -> None:
    """After the in-process rounds: each configuration's step FLOPs (by kind) against the matmul peak, then with
    --profile where each step's time goes (2 profiled steps against its median). The summary is printed after
    the counts and after each profile, so a run stopped by a time limit keeps its MFU."""
    from kernel_kinds import flops_by_kind, format_bound, profiled, where_time_goes

    first = next(iter(built.values()))[0]
    peak = matmul_peak(first.rt.device, first.rt.dtype)
    kinds = {}
    for key, (trainer, step, batches, peak_mb) in built.items():
        kinds[key] = flops_by_kind(step, next(batches))
        runs[key] = [{**row(key, trainer, x["step_s"], sum(kinds[key].values()), peak, peak_mb, None),
                      "round": x["round"]} for x in runs[key]]
    print(json.dumps(summary(runs, names, args, failed, partial=True)), flush=True)
    if not args.profile:
        return
    for key, (trainer, step, batches, _) in built.items():
        step_s = statistics.median(x["step_s"] for x in runs[key])
        prof, wall = profiled(step, batches, trainer.rt.device)
        runs[key][0]["bound"] = where_time_goes(prof, wall, step_s, trainer.rt.device, kinds[key], peak)
        print(format_bound(key, runs[key][0]["bound"]), file=sys.stderr, flush=True)
        print(json.dumps(summary(runs, names, args, failed, partial=True)), flush=True)


PAPER_PRESETS = {"mocov3": "in1k-vit-s16-mocov3-repre", "dino": "in1k-vit-s16-dino-repre",
                 "moby": "in1k-swin-t-moby-repre"}


def resolve_shorthands(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(preset, overrides) from --preset/--method and the --device/--arch/--image-size/--batch-size shorthands;
    explicit --set items come last and win."""
    gpu = args.device == "cuda"
    preset = args.preset or (f"fmnist-{args.method}-repre" if args.method and not gpu else
                             PAPER_PRESETS.get(args.method or "mocov3") if gpu else "fmnist-mocov3-repre")
    extra = []
    if gpu and not args.preset and not any(o.startswith("data.root=") for o in args.overrides):
        extra += ["data.name=synthetic", "data.synthetic_train=512"]  # paper presets without a dataset here
    shorthands = {"train.device": args.device, "model.arch": args.arch, "data.image_size": args.image_size,
                  "train.batch_size": args.batch_size}
    extra += [f"{key}={value}" for key, value in shorthands.items() if value is not None]
    if args.child:  # the parent resolved them already
        return args.preset, args.overrides
    return preset, extra + args.overrides


def label(name: str, extra: str | None) -> str:
    return f"{name}+{extra}" if extra else name


def changes(name: str, extra: str) -> bool:
    """Whether the --compare override changes this configuration's step: recon.* keys other than recon.enabled
    (the decoder's shape) leave the configurations without RePre as they are, so those are not run again (their
    rows stand for both)."""
    return name.startswith("repre") or any(not item.startswith("recon.") or item.startswith("recon.enabled")
                                           for item in extra.split("&"))


def tree_command(tree: str | None) -> tuple[str, dict[str, str] | None]:
    """(the child script, its environment) for a checkout: its own benchmarks/throughput.py with its src/ first
    on the import path; None: this script and this environment."""
    if tree is None:
        return __file__, None
    root = Path(tree).resolve()
    return str(root / "benchmarks" / "throughput.py"), {**os.environ, "PYTHONPATH": str(root / "src")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--preset", help="default: fmnist-mocov3-repre, or the --method's preset")
    p.add_argument("--method", choices=sorted(PAPER_PRESETS), help="mocov3, dino or moby (picks the preset)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="train.device")
    p.add_argument("--arch", help="model.arch: any timm ViT or Swin name, or a small named config")
    p.add_argument("--image-size", type=int, help="data.image_size")
    p.add_argument("--batch-size", type=int, help="train.batch_size (global)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS + OPTIONAL)}")
    p.add_argument("--mfu", action="store_true", help="count step FLOPs and measure the matmul peak (MFU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every configuration (e.g. train.device=cuda)")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                   help="also run every configuration with this override, in the same rounds (repeatable; "
                        "several overrides joined by &): e.g. train.host_sync=step, data.device_stages=workers, "
                        "'recon.views=1&recon.out_stride=4'")
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                   help="also run every configuration from the checkout in DIR, as NAME@LABEL")
    p.add_argument("--in-process", action="store_true",
                   help="build and compile each configuration once in this process, then interleave its rounds "
                        "there (compiled GPU steps; no peak RSS)")
    p.add_argument("--profile", action="store_true",
                   help="with --in-process: where each configuration's step time goes, by kind of kernel "
                        "(matmul, attention, fused, copies, no kernel running...), with the compute kinds' "
                        "achieved FLOP/s against the matmul peak (benchmarks/kernel_kinds.py)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.in_process and args.tree:
        p.error("--in-process times one checkout; --tree runs each checkout's own script in child processes")
    if args.profile and not args.in_process:
        p.error("--profile needs --in-process (the configurations' steps are profiled where they were timed)")
    if args.in_process and any(not is_premade(c) for c in args.configs.split(",")):
        p.error("--in-process times pre-made batches only (*-tensors and lightly configurations): the real "
                "pipeline's workers of every configuration would stay alive and compete for the cores")
    args.preset, args.overrides = resolve_shorthands(args)
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.warmup, args.steps, args.overrides, args.mfu)))
        return
    # each configuration, and each again with every --compare override that changes it: "NAME+KEY=VALUE", in the
    # same rounds
    names = [(n, None) for n in args.configs.split(",")]
    names += [(n, extra) for extra in args.compare for n, _ in list(names) if changes(n, extra)]
    trees = dict(tree.split("=", 1) for tree in args.tree) if args.tree else {"": None}
    runs: dict[str, list[dict]] = {label(*n) + (f"@{t}" if t else ""): [] for t in trees for n in names}
    failed: dict[str, str] = {}
    if args.in_process:
        runs = in_process(names, args, failed)
    for r in range(0 if args.in_process else args.rounds):
        for (name, extra), tree in in_round_order(list(itertools.product(names, trees)), r):
            script, env = tree_command(trees[tree])
            cmd = [sys.executable, script, "--child", name, "--preset", args.preset,
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += [f"--set={item}" for item in args.overrides + (extra.split("&") if extra else [])]
            cmd += ["--mfu"] * args.mfu
            name = label(name, extra) + (f"@{tree}" if tree else "")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:  # the child's own error, not only "exit status 1"; the other configurations go on
                failed[name] = f"exit {done.returncode}: {done.stderr[-3000:]}"
                print(f"configuration {name} failed ({failed[name]})", file=sys.stderr, flush=True)
                continue
            res = {**json.loads(done.stdout.strip().splitlines()[-1]), "round": r}
            runs[name].append(res)
            print(f"round {r + 1} {name:<17} {res['images_per_sec']:7.1f} img/s", file=sys.stderr, flush=True)
            # what is done so far, as the last stdout line: a run stopped by a time limit keeps it
            print(json.dumps(summary(runs, names, args, failed, partial=True)), flush=True)
    if not any(runs.values()):
        sys.exit("every configuration failed")
    result = summary(runs, names, args, failed)
    print(f"\n{'config':<20}{'img/s':>9}{'step s':>9}{'peak MB':>13}{'MFU':>7}  (peak MB: RSS, or CUDA in-process)")
    for name, row in result["results"].items():
        mfu = f"{row['mfu']:.3f}" if row["mfu"] is not None else "-"
        memory = row["peak_rss_mb"] if row["peak_rss_mb"] is not None else row["peak_cuda_mb"]
        memory = f"{memory:.0f}" if memory is not None else "-"
        print(f"{name:<20}{row['images_per_sec']:>9.1f}{row['step_s']:>9.3f}{memory:>13}{mfu:>7}")
    for key, value in result["ratios"].items():
        paired = result["paired_ratios"].get(key)
        rounds = (f"; round by round {' '.join(f'{x:.3f}' for x in paired['rounds'])}, median {paired['median']:.3f}"
                  if paired and len(paired["rounds"]) > 1 else "")
        print(f"{key}: {value:.3f}{rounds}")
    print(json.dumps(result))
    if failed:
        sys.exit(1)  # after the JSON: the table of what ran is kept, the failure still shows in the exit status


def summary(runs: dict[str, list[dict]], names: list[tuple[str, str | None]], args: argparse.Namespace,
            failed: dict[str, str], partial: bool = False, mfu: bool = True) -> dict:
    """The run's JSON: per configuration the medians over its rounds; MFU against the highest bf16 matmul peak
    measured by any child of this run (one peak for every row, so rows compare); the ratios. mfu=False: rows
    without MFU yet (the in-process rounds, counted after the last)."""
    done = {name: rs for name, rs in runs.items() if rs}
    mfu = mfu and args.mfu
    peak = max((x["device_peak_flops"] for rs in done.values() for x in rs), default=None) if mfu else None
    first = next(iter(done.values()))[0] if done else {}
    sheet = datasheet_flops(first.get("device") or "", first.get("precision") or "")
    table = {}
    for name, rs in done.items():
        step_s = statistics.median(x["step_s"] for x in rs)
        flops = rs[0]["step_flops"] if mfu else None
        table[name] = {
            "images_per_sec": statistics.median(x["images_per_sec"] for x in rs),
            "step_s": step_s,
            "rounds": len(rs),
            "peak_rss_mb": max((x["peak_rss_mb"] for x in rs if x["peak_rss_mb"] is not None), default=None),
            "peak_cuda_mb": rs[0]["peak_cuda_mb"],
            "mfu": flops / step_s / peak if mfu else None,
            "mfu_datasheet": flops / step_s / sheet if mfu and sheet else None,
            "step_tflops": flops / 1e12 if mfu else None,
            "achieved_tflops_per_s": flops / step_s / 1e12 if mfu else None,
            "device_peak_tflops": max(x["device_peak_flops"] for x in rs) / 1e12 if mfu else None,
        }
        if "bound" in rs[0]:  # --profile
            table[name]["bound"] = rs[0]["bound"]
    meta = {"preset": args.preset, "overrides": args.overrides, "compare": args.compare,
            "device": first.get("device"), "rounds": args.rounds, "steps": args.steps,
            "precision": first.get("precision"), "batch_size": first.get("batch_size"),
            "run_peak_tflops": peak / 1e12 if peak else None,
            "datasheet_peak_tflops": sheet / 1e12 if sheet else None, "in_process": args.in_process,
            "date": time.strftime("%Y-%m-%d")}
    pairs = ratio_pairs(names, args.compare, [tree.split("=", 1)[0] for tree in args.tree])
    ratios = {key: table[a][FIELD[kind]] / table[b][FIELD[kind]]  # of the medians over the rounds
              for key, (a, b, kind) in pairs.items() if {a, b} <= set(table)}
    paired = paired_ratios(done, pairs)
    meta["trees"] = {tree.split("=", 1)[0]: tree.split("=", 1)[1] for tree in args.tree}
    return {"benchmark": "throughput", **meta, "results": table, "ratios": ratios, "paired_ratios": paired,
            "failed": failed, "partial": partial}


FIELD = {"step": "step_s", "images": "images_per_sec"}  # what a ratio divides: step times, or images per second


def ratio_pairs(names: list[tuple[str, str | None]], compare: list[str],
                trees: list[str]) -> dict[str, tuple[str, str, str]]:
    """RePre over baseline step time, pipeline over pre-made tensors, ours over lightly, each --compare
    override over the configuration without it, and each --tree checkout over the first: name -> (numerator,
    denominator, "step" time or "images" per second)."""
    pairs = {
        "repre_step_time_over_baseline": ("repre", "baseline", "step"),
        "repre_step_time_over_baseline_tensors": ("repre-tensors", "baseline-tensors", "step"),
        "pipeline_over_tensors_repre": ("repre", "repre-tensors", "images"),
        "pipeline_over_tensors_baseline": ("baseline", "baseline-tensors", "images"),
        "baseline_tensors_over_lightly_dino": ("baseline-tensors", "lightly-dino", "images"),
        "baseline_tensors_over_lightly": ("baseline-tensors", "lightly", "images"),
        "baseline_per_view_tensors_over_lightly": ("baseline-per-view-tensors", "lightly", "images"),
        "step_time[baseline-per-view-tensors]/[baseline-tensors]": ("baseline-per-view-tensors",
                                                                    "baseline-tensors", "step"),
        "step_time[repre-per-view-tensors]/[repre-tensors]": ("repre-per-view-tensors", "repre-tensors", "step"),
        "step_time[repre-conv-laterals-tensors]/[repre-tensors]": ("repre-conv-laterals-tensors", "repre-tensors",
                                                                   "step"),
        "step_time[repre-conv-laterals-tensors]/[baseline-tensors]": ("repre-conv-laterals-tensors",
                                                                      "baseline-tensors", "step"),
    }
    for extra in compare:  # RePre's overhead under each override (e.g. train.compile=true)
        pairs[f"repre_step_time_over_baseline_tensors[{extra}]"] = (
            label("repre-tensors", extra), label("baseline-tensors", extra if changes("baseline", extra) else None),
            "step")
    for name, extra in names:  # each --compare override against the configuration without it
        if extra:
            pairs[f"images_per_sec[{label(name, extra)}]/[{name}]"] = (label(name, extra), name, "images")
        for other in trees[1:]:  # each checkout against the first: images per second
            row, first = f"{label(name, extra)}@{other}", f"{label(name, extra)}@{trees[0]}"
            pairs[f"images_per_sec[{row}]/[{first}]"] = (row, first, "images")
    if trees:  # rows are NAME@TREE: each pair above within each checkout too
        within = {f"{key}@{tree}": (f"{a}@{tree}", f"{b}@{tree}", kind) for tree in trees
                  for key, (a, b, kind) in pairs.items() if "@" not in a}
        pairs.update(within)
    return pairs


def paired_ratios(runs: dict[str, list[dict]], pairs: dict[str, tuple[str, str, str]]) -> dict[str, dict]:
    """The ratios round by round: each round's numerator over the same round's denominator, both measured in
    that round. Where the machine's speed drifts between rounds (a shared VM), their median is steadier than the
    ratio of the two medians; the per-round values show the spread."""
    out = {}
    for key, (a, b, kind) in pairs.items():
        by_round = {y["round"]: y for y in runs.get(b, [])}  # a round where one of them failed has no ratio
        rounds = [x[FIELD[kind]] / by_round[x["round"]][FIELD[kind]] for x in runs.get(a, []) if x["round"] in by_round]
        if rounds:
            out[key] = {"median": statistics.median(rounds), "rounds": rounds}
    return out


if __name__ == "__main__":
    main()
