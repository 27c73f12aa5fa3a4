"""The pre-training loop: the step (schedules, AMP, forward, backward, clipping; the optimizer step is taken
by the non-finite guard), logs and checkpoints.

What is not the step lives beside it: the non-finite guard (`guard`), checkpoints and resume (`checkpoints`),
what the processes agree on between steps (`agreement`), the data pipeline and its position
(`repre.data.pipeline`), monitors and evaluations (`callbacks`), the process-wide settings of a run
(`repre.core.runtime.run_settings`) and the attention kernel of its training forward (`repre.models.attention`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from repre.builder import build_model, check_builds
from repre.config import Config, check_global_batch, flatten, save_yaml, to_yaml
from repre.core import checkpoint_io, dist, launch, rng, run_files
from repre.core.atomic import replacing
from repre.core.compat import workers_stopped
from repre.core.progress import progress_bar
from repre.core.run_lock import RunLock
from repre.core.runtime import LossScaler, Runtime, run_settings, setup_runtime
from repre.core.schedules import RunSchedules, total_steps
from repre.data.pipeline import PretrainData
from repre.data.sources import check_out_of_images
from repre.data.workers import resolve_workers
from repre.engine.agreement import Agreement
from repre.engine.callbacks import Callback, engine_callbacks
from repre.engine.checkpoints import Checkpoints
from repre.engine.clock import StepClock
from repre.engine.compile import compile_units
from repre.engine.guard import DeviceGuard, ForwardBuffers, make_guard, skips_on_device
from repre.engine.metrics import MetricWriter, WindowMeter, rounded
from repre.engine.optim import build_optimizer, clip_or_measure
from repre.engine.signals import GracefulStop, Interrupted
from repre.engine.state import RunState
from repre.errors import StoppedEarly, UserError, user_message
from repre.models.attention import training_attention
from repre.models.sync_bn import convert_sync_batchnorm
from repre.reconstruction import PretrainingModel

log = logging.getLogger("repre")


# keys each process may set its own way: labels, where its node holds the images, how it reads them and draws
# its bar, and the evaluations (rank 0 alone runs them; their paths are made absolute on each node); every other
# key decides what the processes compute together
PER_PROCESS_KEYS = ("preset", "description", "data.root", "train.num_workers", "train.progress", "eval.")


def check_processes_agree(cfg: Config, images: int, total: int) -> None:
    """Every process of a distributed run trains the run rank 0 records: the same config (but `PER_PROCESS_KEYS`),
    the same number of training images and of steps. Processes launched with other settings would train
    something else silently, and with other lengths wait at a collective until its timeout. Each process
    raises the same UserError."""
    if not dist.is_distributed():
        return
    own = {k: v for k, v in flatten(cfg.to_dict()).items() if not k.startswith(PER_PROCESS_KEYS)}
    own |= {"(training images)": images, "(steps)": total}
    if cfg.data.streamed:  # each process deals the shards by its own count of data workers (`StreamViews`)
        own["train.num_workers (the data workers streamed shards are dealt to)"] = max(
            1, resolve_workers(cfg.train.num_workers))
    everyone = dist.gather_objects(own)
    differ = [(key, r, other.get(key)) for r, other in enumerate(everyone) for key in everyone[0]
              if other.get(key) != everyone[0][key]]
    if differ:
        said = "; ".join(f"{key} is {everyone[0][key]!r} on rank 0, {value!r} on rank {r}"
                         for key, r, value in differ[:4])
        raise UserError(f"the processes do not agree: {said}{' ...' if len(differ) > 4 else ''}; launch every "
                        "process with the same --config and --set items, each node with the same images")


class Trainer:
    """Builds everything a run needs from its config, then `fit()`s; `repre.pretraining.pretrain` is the usual
    entry point. Construction joins torchrun's process group and seeds the global RNG, but changes none of the
    settings of `repre.core.runtime.run_settings`: `fit()` sets them and puts them back."""

    def __init__(self, cfg: Config, out: Path, resume: bool = False, init_from: str | Path | None = None,
                 callbacks: Iterable[Callback] = (), signal: GracefulStop | None = None) -> None:
        """`signal`: the stop requests of a caller that took them before this construction (`pretrain`'s, so
        that one during the build stops the run before its first step); None: `fit` takes its own."""
        # The order matters: the checks that need neither data nor model first, and the lock of an existing --out
        # (a requeue while the run trains is refused before the data are indexed); the seed before the data and the
        # model (every process builds the same weights); --out created once both exist (a wrong setting leaves no
        # folder); the resume before DDP wraps the model.
        self.started, self.signal = time.perf_counter(), signal
        self.cfg, self.out = cfg, out
        self.cuda_used_before = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.rt: Runtime = setup_runtime(cfg.train, join_group=True)
        self.lock = RunLock(out)  # taken once --out exists, given back when `fit` ends (or this construction fails)
        try:
            self._check_before_building(resume, init_from)
            torch.manual_seed(cfg.train.seed)
            self._build(callbacks)
            self._start(resume, init_from)
            self.forward_model = self._wrap_ddp()
            if dist.is_main():
                save_yaml(cfg, out / run_files.CONFIG)
        except BaseException:
            self.lock.unlock()
            raise

    def _check_before_building(self, resume: bool, init_from: str | Path | None) -> None:
        """What needs neither the data nor the trained model, checked before either is built (indexing a dataset
        takes time; `check_builds` builds a shape-only model on the meta device)."""
        cfg = self.cfg
        check_builds(cfg, self.rt.device)
        resuming = resume and bool(checkpoint_io.step_checkpoints(self.out))  # a run's batch is fixed
        check_global_batch("train.batch_size", cfg.train.batch_size, dist.world_size(), resuming=resuming)
        if init_from and not checkpoint_io.checkpoint_file(init_from).is_file():  # before --out is made
            raise UserError(f"--init-from {init_from}: no checkpoint there; give a run directory or a .pt file")
        self._take_lock(runs_only=True)  # a run another process trains: said so before "add --resume" is
        check_out_of_images(self.out, cfg.data)
        run_files.check_out(self.out, resume)
        dist.barrier()  # every process has checked --out before rank 0 writes into it
        self._take_lock()  # a requeue while the run trains: refused before it indexes the data

    def _take_lock(self, runs_only: bool = False) -> None:
        """The run directory's lock, taken by the main process where --out exists (`runs_only`: where it holds a
        run), or the refusal that names its holder; nothing once held. Every process calls this: it gathers the
        main process's answer."""
        kind = run_files.folder_kind(self.out)
        there = kind in ("started", "run") if runs_only else kind != "absent"
        why = self.lock.acquire() if dist.is_main() and there else None
        refusals = [reason for reason in dist.gather_objects(why) if reason]
        if refusals:
            raise UserError(refusals[0])

    def _build(self, callbacks: Iterable[Callback]) -> None:
        """The data, the model and what trains it: optimizer, scaler, guard, schedules, callbacks, checkpoints."""
        cfg = self.cfg
        self.data = PretrainData(cfg, self.rt.device)
        self.total = total_steps(cfg.train, len(self.data))
        check_processes_agree(cfg, len(self.data), self.total)
        self.model: PretrainingModel = self._build_model()
        device_skips = skips_on_device(cfg.train.host_sync, self.rt.device)
        self.optimizer = build_optimizer(self.model, cfg.train.weight_decay, cfg.train.lr,
                                         fused=device_skips or self.rt.device.type == "cuda")
        self.scaler = LossScaler(self.rt)
        self.state = RunState()
        self.guard = make_guard(cfg.train.host_sync, self.state, cfg.train.max_bad_steps, self.optimizer,
                                self.rt.device)
        # what a forward moves and a skipped step puts back: the batch-norm running statistics (the heads') and
        # the method's step buffers (DINO's center, MoBY's queues)
        self.forward_buffers = ForwardBuffers(self.model)
        self.schedules = RunSchedules.build(cfg, self.total, ema=bool(self.model.method.ema_pairs()))
        self.callbacks = [*engine_callbacks(cfg, self.model.method), *callbacks]
        self.meter = WindowMeter(self.rt.device)  # the train line's window, checkpointed between lines
        self.checkpoints = Checkpoints(self.out, cfg, self.model, self.optimizer, self.scaler, self.data, self.state,
                                       self.rt, self.callbacks, self.meter)
        self.agreement = Agreement(self.state, self.rt.device)

    def _start(self, resume: bool, init_from: str | Path | None) -> None:
        """Where the run starts: another run's weights (--init-from), its own last checkpoint (--resume), or
        fresh; --out is created here, once the data and the model are built."""
        if init_from and not resume:  # before --out is made: weights that do not fit leave no folder
            self.checkpoints.init_from(init_from)
        self.out.mkdir(parents=True, exist_ok=True)
        self._take_lock()  # a new --out (an existing one is locked already): before anything is written
        resumed = self.checkpoints.resume(self.total) if resume else False
        if init_from and resume and not resumed:  # the first launch of a requeued command
            self.checkpoints.init_from(init_from)

    def _build_model(self) -> PretrainingModel:
        cfg = self.cfg
        model = build_model(cfg, self.data.num_classes).to(self.rt.device)
        if dist.is_distributed():
            convert_sync_batchnorm(model)  # the heads' batch norm over the global batch, as the official code
            torch.manual_seed(rng.process_seed(cfg.train.seed, dist.rank()))  # drop path: independent draws per process
        if cfg.train.compile:
            compile_units(model)
        return model

    def _wrap_ddp(self) -> nn.Module:
        """The module the step calls: DDP around the model when distributed (gradients averaged over the
        processes), else the model itself. Buffers (queues, the DINO center, batch-norm statistics) are kept
        equal on every process by the methods themselves, so DDP does not broadcast them."""
        if not dist.is_distributed():
            return self.model
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.rt.device] if self.rt.device.type == "cuda" else None
        no_sync: dict[str, Any] = ({"forward_sync_buffers": False}  # torch >= 2.14 (syncs once at init: equal anyway)
                                     if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                                     else {"broadcast_buffers": False})
        return DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True, **no_sync)

    # ------------------------------------------------------------ the step

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch of the loader on the device, its views complete (a dict:
        `repre.data.pipeline`'s docstring; `self.data.to_device(b)` of the loader's `b`); returns detached
        scalars. Called outside `fit()` (a benchmark), it needs the run's settings: `with trainer.settings():
        trainer.train_step(trainer.data.to_device(b))`."""
        views = batch.get("views")
        if views is None or not views.is_floating_point() or views.device.type != self.rt.device.type:
            raise TypeError("train_step takes a batch on the training device, its views complete: "
                            "trainer.train_step(trainer.data.to_device(batch)) for a batch of the loader")
        momentum = self._apply_schedules(self.state.step)
        self.forward_buffers.keep()
        # the backward too: a checkpointed block (model.grad_checkpointing) runs its forward again there
        with training_attention(self.model, self.rt.device, self.rt.dtype):
            with torch.autocast(self.rt.device.type, dtype=self.rt.dtype, enabled=self.rt.amp):
                # the EMA copies move by `momentum` here, inside the forward (Method.ema_then_forward), before it
                out = self.forward_model(batch["views"], momentum, batch["label"], batch.get("local_views"))
            for callback in self.callbacks:
                callback.on_forward(self, out)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = clip_or_measure(params, self.cfg.train.clip_grad, self.cfg.train.clip_mode)
        self.model.method.after_backward()
        finite, overflow = self._finite(out["loss"].detach(), grad_norm)
        outcome = self.guard.step(self.optimizer, finite, overflow, out["loss"], grad_norm, self.agreement.requested)
        self.forward_buffers.restore(outcome.skipped)
        self.agreement.agree_stop(outcome.stop)
        self.scaler.update()
        scalars = {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}  # losses, entropy
        # the skip as every process took it (a step one process found non-finite is skipped by all)
        return {**scalars, "grad_norm": grad_norm.detach(), "skipped_step": outcome.skipped}

    def _finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(finite, overflow), bool scalars on the device. `finite` false: a non-finite loss or gradient, a step
        skipped and counted (`train.max_bad_steps`). `overflow` true: under fp16, gradients that overflowed while
        the loss scaler can still lower its scale, a step skipped and not counted (GradScaler's own skip; at the
        scaler's floor an overflow is a non-finite gradient)."""
        loss_ok, grads_ok = torch.isfinite(loss), torch.isfinite(grad_norm)  # grad_norm: of every gradient, unscaled
        if not self.scaler.is_enabled():
            return loss_ok & grads_ok, torch.zeros_like(grads_ok)
        lowers = self.scaler.current() > LossScaler.FLOOR
        return loss_ok & (grads_ok | lowers), ~grads_ok & lowers

    def _apply_schedules(self, step: int) -> float:
        """This step's values: lr and weight decay into the optimizer's groups, the method's own
        (`set_progress`: DINO's teacher temperature and frozen last layer); returns the EMA momentum, which the
        method's forward applies."""
        sched = self.schedules
        for group in self.optimizer.param_groups:
            group["lr"] = float(sched.lr[step])
            if sched.weight_decay is not None and group.get("decays", True):
                group["weight_decay"] = float(sched.weight_decay[step])
        self.model.method.set_progress(step, self.total)
        return float(sched.momentum[step])

    # ------------------------------------------------------------ the loop

    def settings(self) -> contextlib.AbstractContextManager[None]:
        """The run's process-wide settings (`run_settings`), in force inside the block."""
        return run_settings(self.cfg, self.rt.device, self.cuda_used_before)

    def fit(self) -> dict[str, Any]:
        """Train to the total step count; writes metrics, checkpoints and summary.json, with the run's
        process-wide settings in force until it returns or raises."""
        try:
            self._take_lock()  # a second fit() of this trainer (after a stop) trains under the lock too
            with self.settings():
                return self._fit()
        finally:
            self.lock.unlock()

    def _fit(self) -> dict[str, Any]:
        s, main = self.state, dist.is_main()
        done = self._completed_summary()
        if done is not None:  # a requeued command after the run ended: its results stand, nothing is redone
            log.info("the run in %s completed its %d steps; its summary.json stands (a larger train.max_steps "
                     "with --resume goes on)", self.out, s.step)
            return done
        self.guard.start()
        if main:
            self._say_what_runs()
        # resumed at its last step (no summary says it completed): its end is redone, drawn once in TensorBoard
        writer = MetricWriter(self.out, enabled=main, after_step=s.step, end_redone=0 < s.step == self.total)
        try:
            summary = self._train(writer)
        finally:  # an error or a second Ctrl-C too: TensorBoard's writer thread ends (a notebook runs on)
            writer.close()
        if not summary["completed"]:
            raise StoppedEarly(summary)
        return summary

    def _train(self, writer: MetricWriter) -> dict[str, Any]:
        """The steps from here to the end, the last checkpoint and the summary (`_finish`)."""
        s, main = self.state, dist.is_main()
        writer.text("config", to_yaml(self.cfg), s.step)  # runs told apart in TensorBoard (a resume: its own)
        loader = self.data.loader(s.step, self.rt.pin_memory)
        bar = progress_bar(total=self.total, initial=s.step, disable=not (self.cfg.train.progress and main),
                           desc="pretrain")
        # to the end: a signal during the final evaluations stops them too
        stops = contextlib.nullcontext(self.signal) if self.signal else GracefulStop()
        with contextlib.closing(bar), stops as signal:
            self.agreement.signal = signal
            signal.when = "after this step"
            if dist.is_distributed() and isinstance(self.guard, DeviceGuard):  # no collective a step
                signal.when = "at the next log or checkpoint step (where the processes agree on it)"
            self.model.train()
            with workers_stopped(iter(loader)) as batches:  # stopped before the last checkpoint and evaluations
                completed = self._steps(batches, writer, bar)
            self._sync_point()  # a stop or divergence between log steps: the counts up to here
            completed = completed and not self.guard.diverged
            signal.ending = True
            bar.close()
            if self.guard.diverged:  # the weights are the last good step's, but the run cannot go on as configured
                path = self.checkpoints.last_good
                if main:  # every process stops: said once
                    log.error(self._divergence_advice(path))
            else:
                writer.flush()
                path = self.checkpoints.save(final=True)
                if not completed and main:
                    # a signal that reached another process alone is said by none: rank 0 speaks for all
                    whose = "" if signal.requested else " (a stop asked of another process of the run)"
                    log.warning("stopped at step %d of %d%s, checkpoint %s: go on with %s", s.step, self.total, whose,
                                path, self._resume_command())
            return self._finish(writer, path, completed, signal)

    def _divergence_advice(self, path: Path | None) -> str:
        """What to do when the run stopped for `train.max_bad_steps` non-finite steps in a row; `path`: the last
        good checkpoint."""
        s = self.state
        start = (f"start a new run from it with the run's config: `repre pretrain --config "
                 f"{self.out / run_files.CONFIG} --init-from {path} --out NEW_DIR --set ...`" if path else
                 f"no checkpoint was written yet: start again with `repre pretrain --config "
                 f"{self.out / run_files.CONFIG} --out NEW_DIR --set ...`")
        fp16 = "train.precision=bf16 instead of fp16, " if self.rt.precision == "fp16" else ""
        return (f"stopped: {s.bad_streak} non-finite step{'' if s.bad_streak == 1 else 's'} in a row at step "
                f"{s.step}. Usual remedies: a lower train.lr, {fp16}train.clip_grad (e.g. 3.0), a longer warm-up; "
                f"the last good checkpoint is {path or 'none'}: {start}")

    def _resume_command(self) -> str:
        return ("the same torchrun command with --resume" if launch.launched()
                else f"`repre pretrain --out {self.out} --resume`")

    def _say_what_runs(self) -> None:
        """One line before the first step: what trains on which images, where its files go, on what, and how to
        watch it."""
        processes = dist.world_size()
        log.info("%s into %s: %d step%s of %d images (%s), on %s in %s%s; metrics.jsonl and checkpoints/ there, "
                 "curves: tensorboard --logdir %s", self.cfg.preset, self.out, self.total,
                 "" if self.total == 1 else "s", self.cfg.train.batch_size, self._images(), self.rt.device,
                 self.rt.precision,
                 f" ({processes} processes)" if processes > 1 else "", self.out / run_files.TB)
        if self.cfg.train.compile:
            log.info("train.compile: the first step compiles the model, a long step (on a CPU above all); its time "
                     "is counted apart (compile_s), not in images/s")
        if (images := self._image_count()) is not None:
            for note in self.model.method.data_notes(images):
                log.warning(note)

    def _image_count(self) -> int | None:
        """The training images, or None for a stream of unknown size (its length is its first shard's)."""
        d = self.cfg.data
        return None if d.streamed and not d.stream_size else len(self.data)

    def _images(self) -> str:
        """"12.3 epochs of folder /data/photos: 277 images, 3 classes": the data a layout mistake shows in."""
        d, n = self.cfg.data, self._image_count()
        where = d.name + (f" {d.source}" if d.source else "") + (f" {d.root}" if d.root else "")
        if n is None:
            return f"streamed {where}"
        k = self.data.num_classes
        classes = f"{k} class{'' if k == 1 else 'es'}" if k else "no labels"
        epochs = self.total / max(n // self.cfg.train.batch_size, 1)  # an epoch's last partial batch is dropped
        return f"{epochs:.3g} epoch{'' if f'{epochs:.3g}' == '1' else 's'} of {where}: {n:,} images, {classes}"

    def _run_fit_end(self, summary: dict[str, Any], writer: MetricWriter, completed: bool) -> None:
        for callback in self.callbacks:
            summary.update(callback.on_fit_end(self, writer, completed))

    def _run_interruptibly(self, work: Callable[[], None], signal: GracefulStop) -> bool:
        """Run `work` so that a stop request interrupts it; returns whether any process was stopped so (agreed:
        every process reaches this)."""
        stopped = False
        try:
            with signal.interrupting():
                work()
        except Interrupted:
            stopped = True
        stopped = stopped or signal.requested  # a request the work took for an error of its own (a bare except)
        if dist.is_distributed():
            stopped = bool(dist.all_reduce_sum(torch.tensor([float(stopped)], device=self.rt.device)).item())
        return stopped

    def _completed_summary(self) -> dict[str, Any] | None:
        """summary.json of a resumed run that already completed all its steps, else None. Distributed: None
        unless every process read it so (they must all take the same path)."""
        summary = run_files.completed_summary(self.out, self.state.step) if self.state.step >= self.total else None
        if dist.is_distributed():
            agreed = dist.all_reduce_sum(torch.tensor([float(summary is not None)], device=self.rt.device))
            summary = summary if int(agreed.item()) == dist.world_size() else None
        return summary

    def _steps(self, batches: Iterator[dict[str, torch.Tensor]], writer: MetricWriter, bar: tqdm) -> bool:
        """Steps until the total or a stop request, the batches from the loader's iterator; returns whether the
        run completed."""
        s = self.state
        self._sync_point()  # a stop asked while the run was built: agreed now, before the first step
        clock = StepClock(s, compiling=self.cfg.train.compile)  # the first step of this start compiles
        while s.step < self.total and not self.agreement.stopping():
            self._step(batches, writer, clock)
            if self._after_step(writer, bar, clock):
                return False
        if s.step >= self.total and self.meter:  # resumed at its total between two lines: the steps carried over
            self._log_window(writer, self.meter, bar, None)
        return s.step >= self.total

    def _step(self, batches: Iterator[dict[str, torch.Tensor]], writer: MetricWriter, clock: StepClock) -> None:
        """One step on the loader's next batch; its values into the train line's window."""
        s = self.state
        try:
            raw = next(batches)
        except UserError as exc:  # the data stopped reading (a lost mount): the steps so far are kept
            raise self._data_failed(exc, writer) from None
        batch = self.data.to_device(raw)
        clock.fetched()
        values = self.train_step(batch)
        self.meter.add({**values, **self.schedules.logged(s.step), **self.model.method.logged()})
        s.step += 1
        s.images_seen += self.cfg.train.batch_size
        self.agreement.add_images(batch)
        self.data.observe(batch)
        clock.stepped()

    def _after_step(self, writer: MetricWriter, bar: tqdm, clock: StepClock) -> bool:
        """The train line, the callbacks and the checkpoint that fall on this step; returns whether the run stops
        here for its non-finite steps."""
        t, s = self.cfg.train, self.state
        logs = s.step % t.log_every == 0 or s.step == self.total  # the last step always has its line
        saves = s.step % t.checkpoint_every == 0
        stopped = self.guard.stopped()  # the host strategy: this step ended a streak of max_bad_steps
        if (logs or saves) and not stopped:
            self._sync_point()
            stopped = self.guard.diverged
        if logs or stopped:  # a run stopped for its non-finite steps writes the line of its last window too
            self._log_window(writer, self.meter, bar, clock.window_rate(t.batch_size))
            clock.new_window()
        bar.update(1)  # after the step's train line: a line the bar draws now shows its values
        if stopped:
            return True
        with clock.paused():  # the periodic k-NN and the checkpoint: no step's time, nor the window's
            for callback in self.callbacks:  # before the checkpoint: a run resumed from it has what they wrote
                callback.on_step_end(self, writer)
            if saves and s.step < self.total and not s.bad_streak:
                writer.flush()  # the step's scalars on disk before a resume could take the checkpoint
                self.checkpoints.save()  # never in a run of non-finite steps: the last good one stays newest
        return False

    def _data_failed(self, exc: UserError, writer: MetricWriter) -> UserError:
        """The error to raise when the data fails between two steps: the weights are those of the last step, whole,
        so one process saves them as a checkpoint and the message says how to go on. Under torchrun the others
        wait in a collective, so no checkpoint is written: the newest one is named."""
        if self.state.step == 0:  # nothing trained yet, nothing to keep
            return exc
        if dist.is_distributed():  # no collective here: the other processes wait in one
            newest = checkpoint_io.step_checkpoints(self.out)
            kept = f"the newest checkpoint is {newest[-1]}" if newest else "no checkpoint was written yet"
        else:
            self._sync_point()  # the guard's counts, as every checkpoint records them
            if self.state.bad_streak:  # within a run of non-finite steps: the last good checkpoint stays newest
                good = self.checkpoints.last_good
                kept = (f"the last good checkpoint is {good}" if good else
                        "no checkpoint was written (the last steps were non-finite)")
            else:
                writer.flush()
                path = self.checkpoints.save()
                kept = f"step {self.state.step} saved to {path}" if path else "the checkpoint could not be written"
        return UserError(f"{user_message(exc)}; {kept}: once the data reads again, go on with "
                         f"{self._resume_command()}")

    def _sync_point(self) -> None:
        """At log and checkpoint steps and when the loop ends (every process at the same steps): the image
        counts and the stop agreed, the guard's counts read. Idempotent."""
        self.agreement.sync()
        self.guard.sync()

    def _log_window(self, writer: MetricWriter, meter: WindowMeter, bar: tqdm, images_per_sec: float | None) -> None:
        s = self.state
        values = meter.read()
        s.last = values
        record = {"step": s.step, "kind": "train", **values, "images_per_sec": rounded(images_per_sec)}
        for callback in self.callbacks:  # e.g. loss-balance diagnostics measured in this window
            record.update({k: rounded(v) for k, v in callback.log_values(self).items()})
        writer.write(record)
        if not dist.is_main():  # the window values are the same on every process: rank 0 alone warns
            return
        missing = [k for k, v in values.items() if v is None]
        if missing:  # every step of the window was skipped
            log.warning("no finite %s in the window ending at step %d", ", ".join(missing), s.step)
            return
        speed = ("-" if images_per_sec is None  # no step timed in the window
                 else f"{images_per_sec:.0f}" if images_per_sec >= 10 else f"{images_per_sec:.2g}")  # 157, 0.42
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=speed,
                        refresh=False)  # drawn with the next step, at the bar's own interval (a log file's 30 s)
        for callback in self.callbacks:
            callback.on_log(self, cast(dict[str, float], values))  # no None: `missing` returned above

    def _finish(self, writer: MetricWriter, checkpoint: Path | None, completed: bool,
                signal: GracefulStop) -> dict[str, Any]:
        """The run's summary (written to summary.json on rank 0), with what the callbacks add (k-NN). A run that
        completed its steps and is stopped during its final evaluations ends stopped (`completed` false): its
        last checkpoint holds every step, and --resume redoes the evaluations."""
        s = self.state
        summary = {
            "completed": completed,
            # stopped by `train.max_bad_steps` non-finite steps in a row: `_train`'s advice starts a new run from
            # the last good checkpoint (--resume would repeat them)
            "diverged": self.guard.diverged,
            "steps": s.step,
            "total_steps": self.total,
            "wall_s": None,  # set last: this process's setup, loop and final evaluations
            "train_s": round(s.train_seconds, 3),  # the steps of all resumed parts, data waits included
            "compile_s": round(s.compile_seconds, 3),  # train.compile: the first step of each part
            "images_per_sec": round(s.images_seen / s.train_seconds, 2) if s.train_seconds else None,
            "loss": s.last.get("loss"),
            "loss_contrastive": s.last.get("loss_contrastive"),
            "loss_recon": s.last.get("loss_recon"),
            "knn_top1": None,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "skipped_images": s.skipped_images,
            "nonfinite_steps": s.nonfinite_steps,
            "upscaled_images": s.upscaled_images,
            "preset": self.cfg.preset,  # the config's origin; --set may have changed any of it
            "method": self.cfg.method.name,
            "recon": self.cfg.recon.enabled,
            "device": str(self.rt.device),
            "precision": self.rt.precision,
            "processes": dist.world_size(),
            "versions": checkpoint_io.versions(),
        }
        before_fit_end = dict(summary)  # what the final evaluations (callbacks' on_fit_end) add is kept if they end
        if completed and self._run_interruptibly(lambda: self._run_fit_end(summary, writer, completed), signal):
            summary.clear()  # none of their values: the run is not complete, and --resume runs them again
            summary.update(before_fit_end, completed=False)
            if dist.is_main():
                log.warning("stopped before the run's final evaluations; every step is in %s: go on with %s",
                            checkpoint, self._resume_command())
        elif not completed:
            self._run_fit_end(summary, writer, completed)
        summary["wall_s"] = round(time.perf_counter() - self.started, 3)
        if dist.is_main():
            with replacing(self.out / run_files.SUMMARY) as tmp:
                tmp.write_text(json.dumps(summary, indent=2) + "\n")
        dist.barrier()  # no process exits (torchrun then stops the others) before rank 0's pictures and summary
        return summary
