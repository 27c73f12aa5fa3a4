"""A run's checkpoints: what one holds, writing it, resuming from the newest readable one, and starting from
another run's weights. The files themselves (atomic writes, checksums, safe loading) are `repre.core.checkpoint_io`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from repre.config import RUN_ONLY_KEYS, Config, config_from_dict, flatten, idle_sections, read_written
from repre.config.reads import listed
from repre.core import checkpoint_io, dist, rng, run_files
from repre.core.runtime import Runtime
from repre.core.schedules import total_steps
from repre.data.pipeline import PretrainData
from repre.data.sources import check_data_code, root_named
from repre.engine.callbacks import Callback, load_monitor_states, monitor_states
from repre.engine.metrics import WindowMeter, truncate_metrics
from repre.engine.optim import load_optimizer_state
from repre.engine.state import RunState
from repre.errors import UserError
from repre.methods import eval_encoder_key
from repre.models.backbone import TRAINING_ONLY_KWARGS, fit_backbones
from repre.reconstruction import BRANCH, METHOD, PretrainingModel, encoder_prefix

log = logging.getLogger("repre")

# keys a resumed run may change: how it runs and reports (the run-only keys), how long it runs (its schedules
# then follow the new length), where its images are (a dataset moved to a faster disk: the images it holds are
# counted against the run's) and the evaluations; never what it computes
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "data.root", "eval.", *RUN_ONLY_KEYS)


def _newer_than(last: Path, step_file: Path) -> bool:
    """Whether last.pt holds a later step than `step_file` (the newest step file): last.pt whose own step file
    is gone. A last.pt that cannot be read is not: the step files are tried."""
    if run_files.checkpoint_step(last) is not None:  # it is one of the step files
        return False
    try:
        step = checkpoint_io.load(last, weights=False)["step"]
    except (UserError, KeyError, OSError):
        return False
    return int(step) > (run_files.step_of(step_file.name) or 0)


class Checkpoints:
    """Writes and restores everything a run needs to go on exactly: the model, the optimizer, the scaler, the run
    variables, every process's RNG, the data pipeline's position, the monitors' state and the steps of the next
    train line so far (a resumed run writes the uninterrupted run's lines). Distributed: every process calls `save`
    and `resume` (the state is gathered; rank 0 writes and tidies)."""

    def __init__(self, out: Path, cfg: Config, model: PretrainingModel, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, data: PretrainData, state: RunState, rt: Runtime,
                 callbacks: list[Callback], window: WindowMeter) -> None:
        self.out, self.cfg, self.model, self.optimizer, self.scaler = out, cfg, model, optimizer, scaler
        self.data, self.state, self.rt, self.callbacks, self.window = data, state, rt, callbacks, window
        self.last_good: Path | None = None  # the newest checkpoint written or resumed from with finite state
        self.started_from: dict[str, Any] | None = None  # --init-from's checkpoint: file, sha256, step

    # ------------------------------------------------------------ writing

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds. Distributed: a collective (every process's RNG state is gathered)."""
        return {
            "schema": checkpoint_io.SCHEMA,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.state.step,
            "run": self.state.to_dict(),
            "monitors": monitor_states(self.callbacks),  # those with a state; rank 0's: it reads the train lines
            "window": self.window.state_dict(),  # the next train line's steps so far, each process's
            "rng": rng.state_dict(self.rt.device),
            "stream": self.data.state_dict(),  # the data pipeline's position (None: the step says it all)
            "config": self.cfg.to_dict(),
            "runtime": self._runtime(),
            "images": len(self.data),  # the training images: a resume from a moved data.root must find as many
            "data_code": self.data.code,  # data.name=python: which file made them (None: repre's own readers)
            "init_from": self.started_from,  # the weights it started from, where not its own initialization
            "versions": checkpoint_io.versions(),
        }

    def save(self, final: bool = False) -> Path | None:
        """Write step-N.pt and last.pt. A failed periodic write (full disk) leaves the previous checkpoints
        valid, is logged and training goes on; a failed final write raises UserError."""
        state = self.state_dict()
        path = self.out / run_files.CHECKPOINTS / f"{run_files.step_name(self.state.step)}.pt"
        if not dist.is_main():
            self.last_good = path
            return path
        try:
            checkpoint_io.save(state, path)
            checkpoint_io.link_atomic(path, self.out / run_files.CHECKPOINTS / run_files.LAST)  # the same file
        except OSError as exc:
            kept = f"; {self.last_good} is intact" if self.last_good else ""
            failed = exc.filename or path
            message = f"could not write checkpoint {failed} ({exc.strerror or exc}): is the disk full?{kept}"
            if final:
                raise UserError(message + "; free space and rerun with --resume") from None
            log.error("%s; training goes on", message)
            return None
        t = self.cfg.train
        checkpoint_io.prune(self.out, t.keep_checkpoints, t.milestone_every)
        self.last_good = path
        return path

    # ------------------------------------------------------------ reading

    def resume(self, total: int) -> bool:
        """Load the newest readable checkpoint: rank 0's choice, which every process reads (a node whose view of
        --out lags would go on from another step, or none, and wait in a collective for good); rank 0 alone
        tidies."""
        main = dist.is_main()
        if main:
            checkpoint_io.sweep_temporaries(self.out)
        candidates = checkpoint_io.step_checkpoints(self.out)[::-1]
        last = self.out / run_files.CHECKPOINTS / run_files.LAST
        # the newest checkpoint copied alone, or its step file removed since: last.pt first
        if last.is_file() and (not candidates or _newer_than(last, candidates[0])):
            candidates = [last, *candidates]
        candidates = dist.gather_objects(candidates)[0]  # also: nobody reads while rank 0 sweeps
        found = self._first_readable(candidates)
        if found is not None:
            self._adopt(*found, total)
            return True
        if candidates:
            raise UserError(f"no checkpoint in {self.out / run_files.CHECKPOINTS} could be read (each was moved "
                            "aside as *.damaged); start a new --out, or --init-from a copy you trust")
        log.info("no checkpoint in %s: starting fresh", self.out)
        if main:
            near = run_files.similar_runs(self.out)
            if near:
                log.warning("--resume --out %s: it has no checkpoint, so this is a new run; %s beside it has some "
                            "(stop and give that --out to go on with it)", self.out, " or ".join(near))
            truncate_metrics(self.out / run_files.METRICS, self.state.step)
        return False

    def _first_readable(self, candidates: list[Path]) -> tuple[dict[str, Any], Path] | None:
        """The first checkpoint of `candidates` that loads, and its path; each damaged one before it is moved
        aside (NAME.damaged: out of the way of pruning and of the next resume)."""
        for path in candidates:
            # a collective: every process is done reading it before rank 0 moves it
            ckpt, why = checkpoint_io.load_everywhere(path, "the checkpoint", self.out)
            if ckpt is not None:
                return ckpt, path
            if dist.is_main():  # every process finds the same damage: the same bytes
                aside = path.with_name(path.name + ".damaged")
                path.rename(aside)
                log.warning("skipping unreadable checkpoint %s (moved to %s): %s", path, aside.name, why)
        return None

    def _adopt(self, ckpt: dict[str, Any], path: Path, total: int) -> None:
        """Go on from `ckpt`: checked against this run's config, restored, named by last.pt."""
        if ckpt["step"] > total:
            raise UserError(f"cannot resume from {path}: the run is at step {ckpt['step']}, past "
                            f"{self._length(total)}; resume with a longer run (a larger train.max_steps or "
                            "train.epochs), or without setting them to go on as the run was set")
        was = config_from_dict(ckpt["config"])  # in today's keys (keys added since: defaults; roots absolute)
        self._check_compatible(was, path)
        self._check_moved_data(was, ckpt.get("images"), path)
        if dist.is_main():
            check_data_code(self.cfg.data, ckpt.get("data_code"), path)
        self._warn_if_computed_otherwise(ckpt.get("runtime"))
        self._warn_if_longer_or_shorter(was, total)
        self._restore(ckpt, path)
        self.last_good = path
        if dist.is_main():  # last.pt names the checkpoint the run goes on from (not a damaged one moved aside)
            self._relink_last(path)
        log.info("resuming from %s (step %d of %d)", path, self.state.step, total)
        if dist.is_main():
            # at the run's end, its final evaluation is redone unless a summary says the run completed there
            redone = self.state.step == total and run_files.completed_summary(self.out, total) is None
            truncate_metrics(self.out / run_files.METRICS, self.state.step, final=redone)

    def _length(self, total: int) -> str:
        """This run's length as the user set it: "train.max_steps=N" or "train.epochs=E (N steps)"."""
        train = self.cfg.train
        if train.max_steps > 0:
            return f"train.max_steps={total}"
        return f"train.epochs={train.epochs} ({total} steps of {train.batch_size} images)"

    def _relink_last(self, path: Path) -> None:
        last = self.out / run_files.CHECKPOINTS / run_files.LAST
        if not (last.is_file() and os.path.samefile(last, path)):
            checkpoint_io.link_atomic(path, last)

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # the config is the run's (checked): what the data decides differs
            said = str(exc)
            fits = any(k in said for k in ("size mismatch", "Missing key(s)", "Unexpected key(s)"))
            if not fits or "an exception occurred" in said:  # not the weights' shapes or names (out of memory)
                raise
            head = "size mismatch for method.head." in said
            classes = (f" (method.name=supervised: the data hold {self.data.num_classes} classes now, the head "
                       "another count)" if head else "")
            raise UserError(f"cannot resume from {path}: its weights do not fit this run's model{classes}: "
                            f"{checkpoint_io.size_mismatch(exc)}; train anew into another --out") from None
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        if ckpt["scaler"]:  # empty when written with the scaler disabled
            self.scaler.load_state_dict(ckpt["scaler"])
        rng.load_state_dict(ckpt["rng"], self.rt.device)
        self.started_from = ckpt.get("init_from")
        self.data.load_state_dict(ckpt.get("stream"))
        self.state.load(ckpt["step"], ckpt["run"])
        self.window.load_state_dict(ckpt.get("window") or {})
        if dist.is_main():  # rank 0's monitors read the train lines; the others' stay as built
            load_monitor_states(self.callbacks, ckpt.get("monitors"))

    def init_from(self, source: str | Path) -> None:
        """Continued pre-training: this run's model starts from another run's weights (not its optimizer,
        schedules or step). Weights this model lacks or has in addition (a decoder, a head) are listed; the
        checkpoint read is recorded (`started_from`)."""
        source = checkpoint_io.pinned(source)  # a run still training replaces its last.pt
        ckpt = checkpoint_io.load(source)
        ckpt["config"] = read_written(ckpt["config"], refuse_removed=False)[0]  # an older repre's: today's keys
        ckpt["model"] = self._evaluated_as_online(ckpt, source)
        resized = fit_backbones(self.model, ckpt["model"])
        size = ckpt["config"]["data"].get("image_size")
        if resized:
            log.info("--init-from %s: trained at data.image_size=%s, its position embeddings resampled to this run's "
                     "%d", source, size, self.cfg.data.image_size)
        try:
            missing, unexpected = self.model.load_state_dict(ckpt["model"], strict=False)
        except RuntimeError as exc:
            mismatch = checkpoint_io.size_mismatch(exc).rstrip(".")
            if encoder_prefix() in mismatch:
                why, keys = self._unlike(ckpt), "model.arch, model.kwargs and data.image_size"
            elif mismatch.startswith(BRANCH) or f" {BRANCH}" in mismatch:  # the decoder's shapes: recon.* keys
                why, keys = self._unlike_section(ckpt, "recon", "recon"), "recon.* settings"
            else:
                name = self.cfg.method.name
                why, keys = self._unlike_section(ckpt, f"method.{name}", "method"), f"method.{name}.* settings"
            raise UserError(f"--init-from {source}: its weights do not fit this model ({why}: {mismatch}); use the "
                            f"same {keys}, or another checkpoint") from None
        loaded = len(ckpt["model"]) - len(unexpected)

        def parts(keys: list[str]) -> str:  # "decoder", "projector", "teacher_head", ...: the modules they are in
            return ", ".join(sorted({k.removeprefix(BRANCH).removeprefix(METHOD).split(".")[0]
                                     for k in keys})) or "-"

        if not loaded:
            was = ckpt["config"]
            raise UserError(f"--init-from {source}: none of its weights belong to this model (it holds "
                            f"{was['model']['arch']} with {was['method']['name']}; this run builds "
                            f"{self.cfg.model.arch} with {self.cfg.method.name}): give a checkpoint of the same "
                            "model.arch")
        encoder = [k.removeprefix(encoder_prefix()) for k in (*missing, *unexpected) if k.startswith(encoder_prefix())]
        if encoder:  # another depth: blocks that would start at random, or be dropped
            raise UserError(f"--init-from {source}: its encoder is not this run's ({self._unlike(ckpt)}: "
                            f"{len(encoder)} encoder tensors are in one of the two alone, {encoder[0]} first); use "
                            "the same model.arch and model.kwargs, or another checkpoint")
        log.info("initialised from %s (step %s): %d tensors loaded, %d new here (%s), %d not used (%s)", source,
                 ckpt.get("step"), loaded, len(missing), parts(missing), len(unexpected), parts(unexpected))
        self.started_from = {"checkpoint": str(Path(source).resolve()), "sha256": checkpoint_io.digest(source),
                             "step": ckpt.get("step")}
        self._start_new_targets(set(missing))

    def _unlike(self, ckpt: dict[str, Any]) -> str:
        """How the checkpoint's model differs from this run's: its arch, its kwargs, then its image size."""
        was = ckpt["config"]
        if was["model"]["arch"] != self.cfg.model.arch:
            return f"it holds {was['model']['arch']}, this run builds {self.cfg.model.arch}"
        theirs, ours = was["model"].get("kwargs") or {}, self.cfg.model.kwargs or {}
        differ = [k for k in sorted({*theirs, *ours} - set(TRAINING_ONLY_KWARGS)) if theirs.get(k) != ours.get(k)]
        if differ:
            def said(kwargs: dict[str, Any], k: str) -> str:
                return str(kwargs[k]) if k in kwargs else "unset (the architecture's own)"

            return "model.kwargs differ: " + ", ".join(f"{k} {said(theirs, k)} there, {said(ours, k)} here"
                                                       for k in differ)
        size = was["data"].get("image_size")
        if size != self.cfg.data.image_size:
            return f"it trained at data.image_size={size}, this run is at {self.cfg.data.image_size}"
        return "other model settings"

    def _unlike_section(self, ckpt: dict[str, Any], section: str, what: str) -> str:
        """How the checkpoint's settings of a config section ("recon", "method.dino") differ from this run's (the
        shapes of its weights follow them)."""
        theirs: Any = ckpt["config"]
        ours: Any = self.cfg
        for part in section.split("."):
            theirs, ours = (theirs or {}).get(part) or {}, getattr(ours, part, None)
        ours = (flatten({section: dataclasses.asdict(ours)})
                if dataclasses.is_dataclass(ours) and not isinstance(ours, type) else {})
        theirs = flatten({section: theirs})
        differ = [k for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k)]
        if not differ:
            return f"other {what} settings"
        return f"{what} settings differ: " + ", ".join(f"{k} {theirs.get(k)} there, {ours.get(k)} here"
                                                       for k in differ)

    def _evaluated_as_online(self, ckpt: dict[str, Any], source: str | Path) -> dict[str, torch.Tensor]:
        """The checkpoint's weights, with the encoder its method evaluates and exports (DINO's teacher) as the
        online encoder when this run is of another method (a DINO run of the same method keeps its student)."""
        was = ckpt["config"]["method"]["name"]
        key = eval_encoder_key(was)
        if key == "encoder" or was == self.cfg.method.name:
            return ckpt["model"]
        ours, theirs = encoder_prefix(), encoder_prefix(key)
        state = {k: v for k, v in ckpt["model"].items() if not k.startswith(ours)}
        state.update({ours + k[len(theirs):]: v for k, v in ckpt["model"].items() if k.startswith(theirs)})
        log.info("--init-from %s: the encoder starts from its %s (the encoder %s evaluates and exports)", source,
                 key, was)
        return state

    def _start_new_targets(self, missing: set[str]) -> None:
        """Each EMA copy (momentum encoder, teacher, target) that the loaded weights did not fill starts as the
        copy of its online module, as a new run's does (a checkpoint of another method has none, or other names)."""
        names = {id(module): name for name, module in self.model.named_modules()}
        for online, target in self.model.method.ema_pairs():
            prefix = names[id(target)] + "."
            if any(key.startswith(prefix) for key in missing):
                target.load_state_dict(online.state_dict())

    def _check_compatible(self, was: Config, path: Path) -> None:
        """A resumed run must compute what the checkpointed one did; only its length and reporting may change."""
        before, now = flatten(was.to_dict()), flatten(self.cfg.to_dict())
        idle = idle_sections(self.cfg.method.name)
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        changed = [k for k in changed if not k.startswith(RESUMABLE_CHANGES + idle)]
        if changed:
            changed.sort(key=lambda k: k not in ("method.name", "model.arch", "recon.enabled"))  # what else follows
            more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5]) + more
            raise UserError(
                f"cannot resume from {path}: the config differs in {diffs}. Resume with the run's own config "
                f"(no --config, and no --set of those keys) or start a new --out; only "
                f"{listed(RESUMABLE_CHANGES)} may change"
            )

    def _check_moved_data(self, config: Config, images: int | None, path: Path) -> None:
        """data.root may change on resume (the dataset moved): the new root must hold as many training images as
        the run had (`images`: the checkpoint's count; None before it recorded one), and the run says where it
        reads them now."""
        was, now = (root_named(c.data) for c in (config, self.cfg))
        if was == now:
            if images is not None and images != len(self.data) and dist.is_main():  # files added or taken away
                log.warning("data.root %s holds %d training images, the run trained on %d there: its steps from "
                            "here draw from these, not as the uninterrupted run's", now, len(self.data), images)
            return
        if images is not None and images != len(self.data):
            raise UserError(f"cannot resume from {path}: data.root {now} holds {len(self.data)} training images, the "
                            f"run trained on {images} in {was}; give the run's data (the same images, moved), or "
                            "start a new --out with --init-from this run")
        if dist.is_main():
            log.warning("resuming with data.root %s (the run trained on %s): the same images are expected there%s",
                        now, was, f" ({images}, as before)" if images is not None else "")

    def _runtime(self) -> dict[str, Any]:
        """How the steps were computed: the device type, the precision (both resolved), the processes, and
        whether AdamW's step is the fused kernel (train.host_sync=log on a CPU; it rounds otherwise)."""
        return {"device": self.rt.device.type, "precision": self.rt.precision, "processes": dist.world_size(),
                "fused_adamw": bool(self.optimizer.defaults.get("fused"))}

    def _warn_if_computed_otherwise(self, was: dict[str, Any] | None) -> None:
        """train.device may change on resume (a GPU run goes on on a CPU), and with it `auto` precision, and
        train.host_sync (run-only) with AdamW's kernel: say so, since the steps from here are no longer those an
        uninterrupted run computes. What a checkpoint did not record (written before it did) says nothing."""
        was, now = was or {}, self._runtime()  # (None: nothing recorded)
        changed = [k for k in ("device", "precision", "fused_adamw") if k in was and was[k] != now[k]]
        if not changed or not dist.is_main():
            return
        remedy = [f"train.{k}={was[k]}" for k in changed if k != "fused_adamw"]
        if "fused_adamw" in changed:
            remedy.append(f"train.host_sync={'log' if was['fused_adamw'] else 'step'}")

        def how(r: dict[str, Any]) -> str:
            kernel = f" ({'fused' if r['fused_adamw'] else 'unfused'} AdamW)" if "fused_adamw" in changed else ""
            return f"{r.get('device')} in {r.get('precision')}{kernel}"

        log.warning("resuming a run trained on %s on %s: the steps from here compute differently (not bitwise what "
                    "the run would have given where it started); --set %s to go on as it was", how(was), how(now),
                    " --set ".join(remedy))

    def _warn_if_longer_or_shorter(self, config: Config, total: int) -> None:
        """The schedules are rebuilt for a new length (as the official scripts do when --epochs changes): say so."""
        was = total_steps(config.train, len(self.data))
        if was != total and dist.is_main():
            log.warning("resuming a run of %d steps as one of %d: the learning rate, momentum, weight decay and "
                        "the other schedules follow the new length from here on, so their values change at the "
                        "resumed step", was, total)
