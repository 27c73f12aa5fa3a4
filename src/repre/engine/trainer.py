"""The pre-training loop: one place for AMP, backward, clipping, the optimizer step, logs and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from repre.builder import build_model
from repre.config import Config, config_from_dict, flatten, save_yaml
from repre.data.loader import (
    finish_views,
    photometric_on_device,
    pretrain_loader,
    resolve_workers,
    train_source,
    view_spec,
)
from repre.data.stream import StreamShards
from repre.engine import checkpoint as ckpt_io
from repre.engine import distributed as dist
from repre.engine.diagnostics import TrendWatch, loss_balance
from repre.engine.metrics import MetricWriter, WindowMeter
from repre.engine.runtime import Runtime, make_deterministic, setup_runtime
from repre.engine.schedules import momentum_schedule, warmup_cosine
from repre.engine.signals import GracefulStop
from repre.errors import StoppedEarly, UserError
from repre.models.sync_bn import convert_sync_batchnorm

log = logging.getLogger("repre")

COLLAPSE_STD = 0.1  # embedding_std below this: a collapse warning (once a run)
# keys a resumed run may change: how long it runs and how it reports, not what it computes
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.log_every", "train.checkpoint_every",
                     "train.eval_every", "train.diagnose_every", "train.keep_checkpoints", "train.milestone_every", "train.max_bad_steps",
                     "model.grad_checkpointing", "train.progress", "train.num_workers", "train.host_sync",
                     "train.device", "eval.", "description")


@dataclass
class RunState:
    """Run variables restored on resume besides the modules and the optimizer."""

    step: int = 0
    skipped_images: int = 0
    upscaled_images: int = 0  # images smaller than data.image_size, upscaled by their crops
    images_seen: int = 0
    train_seconds: float = 0.0
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    bad_streak: int = 0  # consecutive skipped steps, now
    last: dict[str, float] = field(default_factory=dict)


def prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UserError(
            f"--out {out} is not empty; add --resume to continue that run, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)


def clip_or_measure(params: list[torch.Tensor], max_norm: float, mode: str = "global") -> torch.Tensor:
    """Clip gradients to `max_norm` (> 0), or only measure them (clip_grad_norm_ with an infinite bound still
    rescales every gradient, ~30x slower than measuring on CPU). Returns the global norm before clipping.

    mode "global": one factor for all gradients (torch's clip_grad_norm_); "per_param": each tensor's gradient
    scaled by max_norm / (its norm + 1e-6) when that is below 1 (the official DINO code).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if max_norm > 0 and mode == "global":
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    if max_norm > 0:  # per_param
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, list(scale.to(grads[0].dtype).unbind()))
    return torch.linalg.vector_norm(norms)


COMPILE_GRAPHS = 32  # static graphs per compiled unit: Swin-T has 4 stages x 2 shifts x (online, momentum)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile, in place, every transformer block (online and momentum encoders) and the decoder: the
    repeated units, so one graph serves all blocks; `Module.compile` leaves parameter names unchanged.

    Static shapes: each input shape (DINO's global and local crops, Swin's stages and shifted windows) gets its
    own graph. Dynamo's default would make the second shape symbolic: slower kernels, and on a CPU minutes of
    compiling for a Swin block. Dynamo's limit of graphs per unit is raised to COMPILE_GRAPHS for the process
    (never lowered); torch >= 2.5 shares a graph between the instances of a block, older versions may run
    blocks past the limit uncompiled."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), COMPILE_GRAPHS))
    for module in model.modules():
        if type(module).__name__ in ("Block", "SwinTransformerBlock", "Decoder"):
            module.compile(dynamic=False)


def eager(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` without compiling (a one-off pass such as an evaluation: new shapes would each
    compile a graph). Where torch.compiler.set_stance is missing (torch < 2.6) `fn` runs as it is: correct, but
    its new shapes compile."""
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None:
        return fn(*args, **kwargs)
    with stance("force_eager"):
        return fn(*args, **kwargs)


def total_steps(cfg: Config, dataset_size: int) -> int:
    per_epoch = dataset_size // cfg.train.batch_size
    return cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * per_epoch


class Trainer:
    """Builds everything a run needs from its config, then `fit()`s; `pretrain()` is the usual entry point."""

    def __init__(self, cfg: Config, out: Path, resume: bool = False, init_from: str | Path | None = None) -> None:
        self.started = time.perf_counter()
        self.cfg, self.out = cfg, out
        rt = setup_runtime(cfg.train)
        self.rt: Runtime = dataclasses.replace(rt, device=dist.init_from_env(rt.device))
        # run-wide settings, put back when fit() ends
        self.restore_settings = make_deterministic(cfg, self.rt.device) if cfg.train.deterministic else lambda: None
        if cfg.train.batch_size % dist.world_size():
            raise UserError(f"train.batch_size={cfg.train.batch_size} (the global batch) is not divisible by the "
                            f"{dist.world_size()} processes; use a multiple of {dist.world_size()}")
        prepare_out(out, resume)
        dist.barrier()  # every process has checked --out before rank 0 writes into it
        torch.manual_seed(cfg.train.seed)
        if not dist.is_main():
            dist.barrier()  # rank 0 first: it indexes (and caches) tar shards once for the others
        self.source = train_source(cfg)
        if dist.is_main():
            dist.barrier()
        self.spec = view_spec(cfg, self.source)
        self.total = total_steps(cfg, len(self.source))
        self.model: nn.Module = build_model(cfg, self.source.num_classes).to(self.rt.device)
        if dist.is_distributed():
            convert_sync_batchnorm(self.model)  # the heads' batch norm over the global batch, as the official code
            torch.manual_seed(cfg.train.seed * 1_000 + dist.rank())  # drop path: independent draws per process
        if cfg.train.compile:
            compile_blocks(self.model)
        on_device = cfg.train.host_sync == "log" or (cfg.train.host_sync == "auto" and self.rt.device.type == "cuda")
        self.optimizer = self._optimizer(fused=on_device or self.rt.device.type == "cuda")
        # skip non-finite steps inside the optimizer (its found_inf input) when it can: fused AdamW
        self.sync_free = on_device and getattr(self.optimizer, "_step_supports_amp_scaling", False)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.dtype == torch.float16)
        zero = torch.zeros((), device=self.rt.device)
        self.skips = {"total": zero.clone(), "streak": zero.clone(), "worst": zero.clone()}  # sync-free counters
        self.pending_images = [0, 0]  # distributed: this process's skipped and upscaled images since the last sync
        self.stream_positions: dict[int, tuple] = {}  # streamed shards: each data worker's position (checkpointed)
        t = cfg.train
        warmup = t.warmup_steps if t.warmup_steps > 0 else round(t.warmup_fraction * self.total)
        self.lr = warmup_cosine(t.lr * t.batch_size / 256, t.min_lr, self.total, warmup)  # linear scaling rule
        self.momentum = momentum_schedule(cfg.method.momentum, self.total)
        r = cfg.recon
        self.recon_weight = warmup_cosine(r.weight, r.weight_end, self.total) if r.weight_end is not None else None
        self.weight_decay = (warmup_cosine(t.weight_decay, t.weight_decay_end, self.total)
                             if t.weight_decay_end is not None else None)
        self.state = RunState()
        self.diverged = False
        self.last_good: Path | None = None  # the newest checkpoint written or resumed from with finite state
        self.collapse_warned = False
        self.pending_diag: dict[str, float] = {}
        self.trend = TrendWatch()
        self.stop: GracefulStop | None = None  # set by fit()
        self.stop_agreed = False  # distributed: whether any process was asked to stop (agreed on every step)
        resumed = self._resume() if resume else False
        if init_from and not resumed:
            self._init_from(init_from)
        self.forward_model = self._wrap_ddp()
        if dist.is_main():
            save_yaml(cfg, out / "config.yaml")

    def _wrap_ddp(self) -> nn.Module:
        """The module the step calls: DDP around the model when distributed (gradients averaged over the
        processes), else the model itself. Buffers (queues, the DINO center, batch-norm statistics) are kept
        equal on every process by the methods themselves, so DDP does not broadcast them."""
        if not dist.is_distributed():
            return self.model
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.rt.device] if self.rt.device.type == "cuda" else None
        no_sync = ({"forward_sync_buffers": False}  # torch >= 2.14 (syncs once at init: equal anyway)
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
        return DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True, **no_sync)

    def _optimizer(self, fused: bool) -> torch.optim.Optimizer:
        groups = self.model.param_groups(self.cfg.train.weight_decay)
        return torch.optim.AdamW(groups, lr=self.cfg.train.lr, fused=fused or None)

    # ------------------------------------------------------------ checkpoints

    def _rng_state(self) -> dict[str, torch.Tensor | None]:
        return {"torch": torch.get_rng_state(),  # the training device's generator only
                "cuda": torch.cuda.get_rng_state(self.rt.device) if self.rt.device.type == "cuda" else None}

    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint holds. Distributed: a collective (every process's RNG state is gathered)."""
        s = self.state
        rng = self._rng_state()
        if dist.is_distributed():
            rng["ranks"] = dist.gather_objects(self._rng_state())  # drop path draws differ per process
        return {
            "schema": ckpt_io.SCHEMA,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": s.step,
            "run": {"skipped_images": s.skipped_images, "images_seen": s.images_seen, "train_seconds": s.train_seconds,
                    "nonfinite_steps": s.nonfinite_steps, "upscaled_images": s.upscaled_images},
            "rng": rng,
            "stream": self._stream_state(),
            "config": self.cfg.to_dict(),
            "versions": ckpt_io.versions(),
        }

    def _stream_state(self) -> dict[str, Any] | None:
        """Streamed shards: every process's data-worker positions (distributed: a collective), else None."""
        if not isinstance(self.source, StreamShards):
            return None
        ranks = dist.gather_objects(self.stream_positions) if dist.is_distributed() else [self.stream_positions]
        return {"workers": max(1, resolve_workers(self.cfg.train.num_workers)), "ranks": ranks}

    def _restore_stream(self, saved: dict[str, Any] | None) -> None:
        """Where each data worker's stream goes on: its saved position when the processes and workers are as
        many as when saved, else the start of the earliest saved epoch (not the exact sequence; a warning)."""
        if not isinstance(self.source, StreamShards) or not saved:
            return
        workers = max(1, resolve_workers(self.cfg.train.num_workers))
        if saved["workers"] == workers and len(saved["ranks"]) == dist.world_size():
            self.stream_positions = dict(saved["ranks"][dist.rank()])
            return
        epochs = [pos[0] for ranks in saved["ranks"] for pos in ranks.values()]
        epoch = min(epochs, default=0)
        log.warning("resuming streamed shards with %d processes x %d workers, saved with %d x %d: every stream "
                    "restarts at the start of epoch %d (not the exact sequence of an uninterrupted run)",
                    dist.world_size(), workers, len(saved["ranks"]), saved["workers"], epoch)
        self.stream_positions = {w: (epoch, 0, ()) for w in range(workers)}

    def save_checkpoint(self, final: bool = False) -> Path | None:
        """Write step-N.pt and last.pt. A failed periodic write (full disk) leaves the previous checkpoints
        valid, is logged and training goes on; a failed final write raises UserError.

        Distributed: every process calls it (the state is gathered); rank 0 writes."""
        state = self._checkpoint_state()
        path = self.out / "checkpoints" / f"step-{self.state.step:08d}.pt"
        if not dist.is_main():
            self.last_good = path
            return path
        try:
            ckpt_io.save(state, path)
            ckpt_io.copy_atomic(path, self.out / "checkpoints" / "last.pt")  # bytes, not a second serialisation
        except OSError as exc:
            kept = f"; {self.last_good} is intact" if self.last_good else ""
            failed = exc.filename or path
            message = f"could not write checkpoint {failed} ({exc.strerror or exc}): is the disk full?{kept}"
            if final:
                raise UserError(message + "; free space and rerun with --resume") from None
            log.error("%s; training goes on", message)
            return None
        t = self.cfg.train
        ckpt_io.prune(self.out, t.keep_checkpoints, t.milestone_every)
        self.last_good = path
        return path

    def _resume(self) -> bool:
        """Load the newest readable checkpoint (every process reads the same file; rank 0 alone tidies)."""
        main = dist.is_main()
        if main:
            ckpt_io.sweep_temporaries(self.out)
        candidates = ckpt_io.step_checkpoints(self.out)[::-1]
        dist.barrier()  # nobody reads while rank 0 sweeps
        for path in candidates:
            try:
                ckpt = ckpt_io.load(path)
            except UserError as exc:  # every process finds the same damage: the same bytes
                aside = path.with_name(path.name + ".damaged")
                dist.barrier()  # every process is done reading it before rank 0 moves it
                if main:
                    path.rename(aside)  # out of the way of pruning and of the next resume
                log.warning("skipping unreadable checkpoint %s (moved to %s): %s", path, aside.name, exc)
                continue
            self._check_compatible(ckpt["config"], path)
            self._restore(ckpt)
            self.last_good = path
            log.info("resuming from %s (step %d of %d)", path, self.state.step, self.total)
            if main:
                self._truncate_metrics()
            return True
        if candidates:
            raise UserError(f"no checkpoint in {self.out / 'checkpoints'} could be read (each was moved aside as "
                            "*.damaged); start a new --out, or --init-from a copy you trust")
        log.info("no checkpoint in %s: starting fresh", self.out)
        if main:
            self._truncate_metrics()
        return False

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        fused = [g.get("fused") for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, was in zip(self.optimizer.param_groups, fused, strict=True):
            group["fused"] = was  # this run's choice (device, host_sync), not the checkpointed run's
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")):  # fused keeps step on the parameter's device, else CPU
                    state["step"] = state["step"].to(p.device if was else "cpu", torch.float32)
        if ckpt["scaler"]:  # empty when written with the scaler disabled
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        ranks = rng.get("ranks")
        if dist.is_distributed() and ranks and len(ranks) == dist.world_size():
            rng = ranks[dist.rank()]
        elif dist.is_distributed() or ranks:
            log.info("resuming with %d processes, written with %d: drop-path draws continue from new seeds",
                     dist.world_size(), len(ranks or [1]))
            rng = {"torch": torch.get_rng_state(), "cuda": None}  # this process's own seed (set in __init__)
        torch.set_rng_state(rng["torch"])
        cuda_rng = rng.get("cuda")
        if torch.is_tensor(cuda_rng) and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.rt.device)
        self._restore_stream(ckpt.get("stream"))
        self.state.step = int(ckpt["step"])
        run = ckpt["run"]
        self.state.skipped_images = int(run["skipped_images"])
        self.state.images_seen = int(run["images_seen"])
        self.state.train_seconds = float(run["train_seconds"])
        self.state.nonfinite_steps = int(run.get("nonfinite_steps", 0))
        self.state.upscaled_images = int(run.get("upscaled_images", 0))

    def _init_from(self, source: str | Path) -> None:
        """Continued pre-training: this run's model starts from another run's weights (not its optimizer,
        schedules or step). Weights this model lacks or has in addition (a decoder, a head) are listed."""
        ckpt = ckpt_io.load(source)
        try:
            missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=False)
        except RuntimeError as exc:
            raise UserError(f"--init-from {source}: its weights do not fit this model ({ckpt_io.size_mismatch(exc)}); use the same "
                            "model.arch and method settings, or another checkpoint") from None
        loaded = len(ckpt["model"]) - len(unexpected)
        if not loaded:
            raise UserError(f"--init-from {source}: none of its weights belong to this model")
        log.info("initialised from %s (step %s): %d tensors loaded, %d new here (%s), %d not used (%s)", source,
                 ckpt.get("step"), loaded, len(missing), ", ".join(sorted({k.split(".")[0] for k in missing})) or "-",
                 len(unexpected), ", ".join(sorted({k.split(".")[0] for k in unexpected})) or "-")

    def _check_compatible(self, old: dict[str, Any], path: Path) -> None:
        """A resumed run must compute what the checkpointed one did; only its length and reporting may change."""
        before, now = flatten(config_from_dict(old).to_dict()), flatten(self.cfg.to_dict())  # keys added since: defaults
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        changed = [k for k in changed if not k.startswith(RESUMABLE_CHANGES)]
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
            raise UserError(
                f"cannot resume from {path}: the config differs in {diffs}. Resume with the run's own "
                f"config (omit --config) or start a new --out; only {', '.join(RESUMABLE_CHANGES)} may change"
            )

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.state.step]
            path.write_text("".join(f"{ln}\n" for ln in keep))

    # ------------------------------------------------------------ the step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch of views [B, 2, 3, H, W]; returns detached scalars."""
        step = self.state.step
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lr[step])
            if self.weight_decay is not None and group.get("decays", True):
                group["weight_decay"] = float(self.weight_decay[step])
        method = self.model.method
        method.set_progress(step, self.total)
        if self.recon_weight is not None and self.cfg.recon.enabled:
            self.model.weight = float(self.recon_weight[step])
        batch = self._to_device(batch)
        with torch.autocast(self.rt.device.type, dtype=self.rt.dtype, enabled=self.rt.amp):
            out = self.forward_model(batch["views"], float(self.momentum[step]), batch["label"], batch.get("local_views"))
        if self._diagnose_now():
            balance = loss_balance(self.model.encoder, out["loss_contrastive"], getattr(self.model, "weight", 0.0) * out["loss_recon"])
            self.pending_diag = {k: float(v) for k, v in balance.items()}  # logged with the next train line
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_or_measure(params, self.cfg.train.clip_grad, self.cfg.train.clip_mode)
        method.after_backward()
        finite = torch.isfinite(out["loss"].detach())
        if not self.scaler.is_enabled():  # fp16: the scaler skips steps with inf/nan gradients itself
            finite = finite & torch.isfinite(grad_norm)
        if self.sync_free:
            self._step_on_device(finite)
        else:
            self._step_on_host(finite, out["loss"], grad_norm)
        self.scaler.update()
        scalars = {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}  # losses, entropy
        return {**scalars, "grad_norm": grad_norm.detach(), "skipped_step": (~finite).float()}

    def _step_on_host(self, finite: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """train.host_sync=step: the skip is decided here (one host sync a step; distributed: one all-reduce)."""
        step = self.state.step
        finite = self._agree(finite)
        if bool(finite):  # a non-finite step must not reach the weights
            self.scaler.step(self.optimizer)
            self.state.bad_streak = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.state.nonfinite_steps += 1
            self.state.bad_streak += 1
            log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s): step skipped",
                        step + 1, float(loss.detach()), float(grad_norm))

    def _step_on_device(self, finite: torch.Tensor) -> None:
        """train.host_sync=log: the fused AdamW step skips itself when `finite` is false (its found_inf input,
        the protocol GradScaler uses), and the skip counters stay on the device until `_sync_point`."""
        bad = (~finite).float()
        if dist.is_distributed():  # one process's non-finite loss skips the step everywhere (async: no host sync)
            bad = dist.all_reduce_max(bad)
        if self.scaler.is_enabled():  # fp16: the scaler passes its own found_inf (overflowing gradients)
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.grad_scale, self.optimizer.found_inf = None, bad
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.grad_scale, self.optimizer.found_inf
        k = self.skips
        k["total"] += bad
        k["streak"] = (k["streak"] + 1) * bad
        k["worst"] = torch.maximum(k["worst"], k["streak"])

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step's tensors on the training device (non-blocking from pinned memory), with the stages the loader
        left out run there (aug.geometric_on, aug.photometric_on; JPEG bytes stay on the CPU for the decoder)."""
        moved = {k: batch[k].to(self.rt.device, non_blocking=True)
                 for k in ("views", "label", "local_views", "photo", "local_photo", "pixels") if k in batch}
        return finish_views({**batch, **moved}, self.spec)

    def _agree(self, finite: torch.Tensor) -> torch.Tensor:
        """Distributed, host_sync=step: one all-reduce a step so that every process takes the same decisions:
        skip the step if any process's loss is non-finite, stop if any was signalled. Single process: `finite`."""
        if not dist.is_distributed():
            return finite
        local = torch.stack([(~finite).float(), torch.tensor(float(self.stop is not None and self.stop.requested),
                                                             device=finite.device)])
        bad, stop = dist.all_reduce_sum(local.to(self.rt.device)).tolist()
        self.stop_agreed = self.stop_agreed or stop > 0
        return torch.tensor(bad == 0)

    def _sync_point(self) -> None:
        """At log and checkpoint steps and when the loop ends (every process at the same steps): the image
        counts summed over the processes, the stop agreed (host_sync=log), the device's skip counters read and
        the max_bad_steps rule applied (host_sync=log). Idempotent."""
        s = self.state
        if dist.is_distributed():
            stop = float(self.stop is not None and self.stop.requested)
            total = dist.all_reduce_sum(torch.tensor([*map(float, self.pending_images), stop], device=self.rt.device))
            skipped, upscaled, stop = total.tolist()
            s.skipped_images, s.upscaled_images = s.skipped_images + int(skipped), s.upscaled_images + int(upscaled)
            self.pending_images = [0, 0]
            self.stop_agreed = self.stop_agreed or stop > 0
        if self.sync_free and not self.diverged:
            total, streak, worst = torch.stack(list(self.skips.values())).tolist()
            new = int(total) - s.nonfinite_steps
            if new and dist.is_main():  # the same count on every process (the skip flag is agreed)
                log.warning("%d step(s) up to step %d skipped for a non-finite loss or gradient", new, s.step)
            s.nonfinite_steps, s.bad_streak = int(total), int(streak)
            self.skips["worst"] = self.skips["streak"].clone()
            if worst >= self.cfg.train.max_bad_steps:
                s.bad_streak = max(s.bad_streak, int(worst))
                self.diverged = True

    def _stopping(self, stop: GracefulStop) -> bool:
        """Whether to stop before the next step: a signal here, or (distributed) on any process."""
        return self.stop_agreed if dist.is_distributed() else stop.requested

    def _diagnose_now(self) -> bool:
        every = self.cfg.train.diagnose_every
        return bool(every) and self.cfg.recon.enabled and (self.state.step + 1) % every == 0


    # ------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to the total step count; writes metrics, checkpoints, recon.png and summary.json. The run's
        process-wide settings (train.deterministic) are put back when it returns or raises."""
        try:
            return self._fit()
        finally:
            self.restore_settings()

    def _fit(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        main = dist.is_main()
        self.skips["total"].fill_(s.nonfinite_steps)  # host_sync=log counts on from a resumed run's total
        writer = MetricWriter(self.out, enabled=main)
        loader = pretrain_loader(cfg, self.source, s.step, self.rt.pin_memory,
                                 photometric_on_device(cfg, self.rt.device), dict(self.stream_positions))
        bar = tqdm(total=self.total, initial=s.step, disable=not (cfg.train.progress and main), dynamic_ncols=True,
                   desc="pretrain")
        with GracefulStop() as stop:
            self.stop = stop
            completed = self._loop(loader, writer, bar, stop)
            self._sync_point()  # a stop or divergence between log steps: the counts up to here
            completed = completed and not self.diverged
        bar.close()
        if self.diverged:  # the weights are the last good step's, but the run cannot go on as configured
            path = self.last_good
            log.error(
                "stopped: %d non-finite steps in a row at step %d. The last good checkpoint is %s. Usual remedies: "
                "a lower train.lr, train.precision=bf16 instead of fp16, train.clip_grad (e.g. 3.0), a longer "
                "warm-up: start again from it with `repre pretrain --init-from CHECKPOINT --out NEW_DIR --set ...`",
                s.bad_streak, s.step, path or "none (no checkpoint was written yet)")
        else:
            path = self.save_checkpoint(final=True)
        summary = self._finish(writer, path, completed)
        writer.close()
        if not completed:
            raise StoppedEarly(json.dumps(summary))
        return summary

    def _loop(self, loader, writer: MetricWriter, bar: tqdm, stop: GracefulStop) -> bool:
        """Steps until the total or a stop request; returns whether the run completed."""
        cfg, s = self.cfg, self.state
        meter, window_start, window_steps = WindowMeter(self.rt.device), time.perf_counter(), 0
        self.model.train()
        batches, tick = iter(loader), time.perf_counter()
        while s.step < self.total and not self._stopping(stop):
            batch = next(batches)
            values = self.train_step(batch)
            if s.bad_streak >= cfg.train.max_bad_steps:  # host_sync=step; with log, _sync_point decides
                self.diverged = True
                return False
            scheduled = {"recon_weight": self.recon_weight[s.step]} if self.recon_weight is not None else {}
            if self.weight_decay is not None:
                scheduled["weight_decay"] = self.weight_decay[s.step]
            meter.add({**values, "lr": self.lr[s.step], "momentum": self.momentum[s.step], **scheduled})
            s.step += 1
            window_steps += 1
            s.images_seen += cfg.train.batch_size
            self._count_images(batch)
            if "stream" in batch:  # the position of the worker this batch came from, after it
                self.stream_positions[batch["stream"][0]] = tuple(batch["stream"][1:])
            s.train_seconds += time.perf_counter() - tick  # wall time, data waits included
            tick = time.perf_counter()
            bar.update(1)
            logs = s.step % cfg.train.log_every == 0 or s.step == self.total
            if logs or s.step % cfg.train.checkpoint_every == 0:
                self._sync_point()
                if self.diverged:
                    return False
            if logs:
                elapsed = time.perf_counter() - window_start
                self._log_window(writer, meter, bar, window_steps * cfg.train.batch_size / max(elapsed, 1e-9))
                window_start, window_steps = time.perf_counter(), 0
            if s.step % cfg.train.checkpoint_every == 0 and s.step < self.total and not s.bad_streak:
                self.save_checkpoint()  # never in a run of non-finite steps: the last good one stays newest
            if cfg.train.eval_every and s.step % cfg.train.eval_every == 0 and s.step < self.total and dist.is_main():
                self._evaluate(writer, quick=True)  # the other processes wait for rank 0 in the next step
        return s.step >= self.total

    def _count_images(self, batch: dict[str, torch.Tensor]) -> None:
        """Skipped (unreadable) and upscaled images of a step's batch (CPU tensors: no device sync);
        distributed: kept until `_sync_point` sums them over the processes."""
        skipped, upscaled = int(batch["skipped"]), int(batch.get("upscaled", 0))
        if dist.is_distributed():
            self.pending_images = [self.pending_images[0] + skipped, self.pending_images[1] + upscaled]
        else:
            self.state.skipped_images += skipped
            self.state.upscaled_images += upscaled

    def _log_window(self, writer: MetricWriter, meter: WindowMeter, bar: tqdm, images_per_sec: float) -> None:
        s = self.state
        values = meter.read()
        s.last = values
        record = {
            "step": s.step,
            "kind": "train",
            **values,  # window averages, lr and momentum included
            "images_per_sec": images_per_sec,
            **self.pending_diag,  # loss-balance diagnostics of one step, when measured in this window
        }
        self.pending_diag = {}
        writer.write(record)
        if not dist.is_main():  # the window values are the same on every process: rank 0 alone warns
            return
        missing = [k for k, v in values.items() if v is None]
        if missing:  # every step of the window was skipped
            log.warning("no finite %s in the window ending at step %d", ", ".join(missing), s.step)
            return
        if self.cfg.recon.enabled:
            self.trend.update(values["loss_contrastive"], values["loss_recon"])
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{images_per_sec:.0f}")
        self._watch_collapse(values)

    def _watch_collapse(self, values: dict[str, float]) -> None:
        """One warning a run: embeddings collapsing to a point, or (DINO, after the warm-up) a teacher whose
        outputs are near uniform over the K prototypes."""
        if self.collapse_warned:
            return
        step, why = self.state.step, None
        if step <= 0.1 * self.total:  # a fresh encoder's features may be anisotropic: judge after the warm-up
            return
        if values.get("embedding_std", 1.0) < COLLAPSE_STD:
            why = (f"embedding_std {values['embedding_std']:.3f} (about 1 when healthy, 0 when every image maps to "
                   "one point)")
        uniform = math.log(max(self.cfg.method.out_dim, 2))
        if values.get("teacher_entropy", 0.0) > 0.95 * uniform:
            why = f"teacher_entropy {values['teacher_entropy']:.2f} of at most {uniform:.2f} (uniform outputs)"
        if why:
            self.collapse_warned = True
            log.warning("step %d: %s: the run is collapsing; check the lr, the temperatures (DINO: teacher_temp, "
                        "center_momentum) and the EMA momentum", step, why)

    def _evaluate(self, writer: MetricWriter, quick: bool = False) -> float | None:
        """k-NN top-1 logged as an eval line; `quick` (during training) uses the eval.quick_knn_* subsets."""
        from repre.eval.knn import knn_top1_or_none

        cfg = self.cfg
        if quick:
            e = dataclasses.replace(cfg.eval, knn_train_subset=cfg.eval.quick_knn_train, knn_test_subset=cfg.eval.quick_knn_test)
            cfg = dataclasses.replace(cfg, eval=e)
        top1 = eager(knn_top1_or_none, self.model.method.eval_encoder, cfg, self.rt)
        if top1 is not None:
            writer.write({"step": self.state.step, "kind": "eval", "knn_top1": top1, "knn_quick": quick})
        self.model.train()
        return top1

    def _finish(self, writer: MetricWriter, checkpoint: Path | None, completed: bool) -> dict[str, Any]:
        from repre.eval.recon import save_recon_grid

        main = dist.is_main()  # the other processes return the same summary without evaluating or writing
        if completed and self.cfg.recon.enabled and main:
            eager(save_recon_grid, self.model, self.cfg, self.source, self.out / "recon.png", self.rt)
        top1 = self._evaluate(writer) if completed and self.cfg.eval.knn and main else None
        s = self.state
        summary = {
            "completed": completed,
            "steps": s.step,
            "total_steps": self.total,
            "wall_s": round(time.perf_counter() - self.started, 3),  # this process: setup, loop, final eval
            "train_s": round(s.train_seconds, 3),  # the training loop over all resumed parts, data waits included
            "images_per_sec": round(s.images_seen / s.train_seconds, 2) if s.train_seconds else None,
            "loss": s.last.get("loss"),
            "loss_contrastive": s.last.get("loss_contrastive"),
            "loss_recon": s.last.get("loss_recon"),
            "knn_top1": top1,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "skipped_images": s.skipped_images,
            "nonfinite_steps": s.nonfinite_steps,
            "upscaled_images": s.upscaled_images,
            "preset": self.cfg.preset,
            "device": str(self.rt.device),
            "precision": self.rt.precision,
            "processes": dist.world_size(),
            "versions": ckpt_io.versions(),
        }
        if main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def pretrain(cfg: Config, out: str | Path, resume: bool = False, init_from: str | Path | None = None) -> dict[str, Any]:
    """Pre-train per `cfg` into `out`; returns the summary (also written to out/summary.json). `init_from`: a
    checkpoint (or run directory) whose model weights start this run, unless `resume` finds a checkpoint.

    Raises `StoppedEarly` (its message: the summary JSON) when interrupted; the run can be resumed.
    Under torchrun (WORLD_SIZE > 1) every process calls it: it joins the process group, trains its share of
    each global batch, and leaves the group at the end.
    """
    joins = dist.launched() and not dist.is_distributed()  # launched by torchrun: we join and leave
    try:
        return Trainer(cfg, Path(out), resume, init_from).fit()
    finally:
        if joins:
            dist.shutdown()
