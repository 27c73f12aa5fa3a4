"""The non-finite guard: an optimizer step whose loss or gradients are not finite is skipped (weights, optimizer
state and the buffers the forward moved stay as they were; the EMA copies keep the update that ran before the
forward, towards the unchanged weights) and counted; `train.max_bad_steps` skipped steps in a row stop the run.

Two strategies, chosen by `train.host_sync` (`make_guard`):
- `HostGuard` (`step`): the skip is decided on the host, one sync a step (distributed: one all-reduce that also
  carries the stop request, so every process takes the same decision at the same step).
- `DeviceGuard` (`log`, the default on a GPU): the fused AdamW step skips itself on a device flag and the counts
  stay on the device; they are read, and `max_bad_steps` applied, at the trainer's sync points (log and
  checkpoint steps), so a step has no host sync.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from repre.core import compat, dist
from repre.engine.state import RunState

log = logging.getLogger("repre")


class Outcome(NamedTuple):
    """A step as the guard took it: `skipped` (a float 0-d tensor, 1.0 or 0.0), the same on every process (fp16:
    a step skipped for gradients that overflowed while the loss scaler could lower its scale reads 0, the
    scaler's own business); `stop`: whether a process asked to stop, where the step's agreement carried the
    request (the host strategy's one all-reduce carries both), else False."""

    skipped: torch.Tensor
    stop: bool


class NonFiniteGuard:
    """Takes the optimizer step unless it is non-finite; counts skips in `state`; sets `diverged`."""

    def __init__(self, state: RunState, max_bad_steps: int) -> None:
        self.state, self.max_bad_steps = state, max_bad_steps
        self.diverged = False

    def start(self) -> None:
        """Called when the loop starts (after a resume: the counts go on from the checkpoint's)."""

    def step(self, optimizer: torch.optim.Optimizer, finite: torch.Tensor, overflow: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        """Take the optimizer step (its gradients unscaled) unless `finite` (a bool scalar on the device: this
        process's loss and gradients) is false on any process, a skip counted, or `overflow` (fp16's gradients
        overflowed, the loss scaler lowers its scale) is true, a skip not counted that leaves the streak as it
        was."""
        raise NotImplementedError

    def sync(self) -> None:
        """At a sync point (every process at the same steps): bring the counts to the host."""

    def stopped(self) -> bool:
        """Whether the run must stop: `max_bad_steps` skipped steps in a row, as the host knows them now (the
        host strategy: after every step; the device strategy: as of the last sync point)."""
        if self.state.bad_streak >= self.max_bad_steps:
            self.diverged = True
        return self.diverged


class HostGuard(NonFiniteGuard):
    def step(self, optimizer: torch.optim.Optimizer, finite: torch.Tensor, overflow: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        s = self.state
        flags = torch.stack([~finite, overflow, torch.tensor(stop_requested, device=finite.device)]).float()
        if dist.is_distributed():  # one process's non-finite step skips it everywhere; a stop anywhere stops all
            flags = dist.all_reduce_sum(flags)
        bad, overflowed, stops = flags.tolist()  # the step's one sync
        stop = stops > 0 and dist.is_distributed()
        if not (bad or overflowed):  # a non-finite step must not reach the weights
            optimizer.step()
            s.bad_streak = 0
            return Outcome(torch.tensor(0.0), stop)
        optimizer.zero_grad(set_to_none=True)
        if not bad:  # fp16: the loss scaler lowers its scale
            return Outcome(torch.tensor(0.0), stop)
        s.nonfinite_steps += 1
        s.bad_streak += 1
        if dist.is_main():  # the skip is agreed: said once
            log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s): step skipped",
                        s.step + 1, float(loss.detach()), float(grad_norm))
        return Outcome(torch.tensor(1.0), stop)


class DeviceGuard(NonFiniteGuard):
    def __init__(self, state: RunState, max_bad_steps: int, device: torch.device) -> None:
        super().__init__(state, max_bad_steps)
        zero = torch.zeros((), device=device)
        self.total, self.streak, self.worst = zero.clone(), zero.clone(), zero.clone()

    def start(self) -> None:
        self.total.fill_(self.state.nonfinite_steps)
        self.streak.fill_(self.state.bad_streak)

    def step(self, optimizer: torch.optim.Optimizer, finite: torch.Tensor, overflow: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        flags = torch.stack([~finite, overflow]).float()
        if dist.is_distributed():  # one process's non-finite loss skips the step everywhere (async: no host sync)
            flags = dist.all_reduce_max(flags)
        bad, overflowed = flags.unbind()
        compat.step_unless(optimizer, torch.maximum(bad, overflowed))
        self.total += bad
        self.streak = torch.where(bad > 0, self.streak + 1, self.streak * overflowed)  # overflow: as it was
        self.worst = torch.maximum(self.worst, self.streak)
        return Outcome(bad, False)  # the stop request is agreed at the sync points

    def sync(self) -> None:
        if self.diverged:
            return
        s = self.state
        total, streak, worst = torch.stack([self.total, self.streak, self.worst]).tolist()
        new = int(total) - s.nonfinite_steps
        if new and dist.is_main():  # the same count on every process (the skip flag is agreed)
            log.warning("%d step(s) up to step %d skipped for a non-finite loss or gradient", new, s.step)
        s.nonfinite_steps, s.bad_streak = int(total), int(streak)
        self.worst = self.streak.clone()
        if worst >= self.max_bad_steps:
            s.bad_streak = max(s.bad_streak, int(worst))
            self.diverged = True


class ForwardBuffers:
    """The buffers a step's forward changes before the step is known to be skipped, kept from before it: the
    batch-norm running statistics and counts (MoCo v3's and MoBY's heads; ViT and Swin have none) and the
    method's own (`Method.step_buffers`: DINO's center, MoBY's queues). A forward that made NaN would leave
    them NaN for good, and a skipped step's teacher outputs or keys would stay in them: a skipped step puts
    them back."""

    def __init__(self, model: torch.nn.Module) -> None:
        norms = [b for m in model.modules() if isinstance(m, compat.BatchNormBase)
                 for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        method = getattr(model, "method", None)
        self.live = norms + (list(method.step_buffers()) if method is not None else [])
        self.kept = [b.clone() for b in self.live]

    def keep(self) -> None:
        """Before the forward."""
        compat.copy_each_(self.kept, self.live)

    def restore(self, skipped: torch.Tensor) -> None:
        """After the step: where `skipped` (the guard's outcome; on the device for the device strategy, no
        host sync) is 1, the statistics from before the forward."""
        if not self.live or (skipped.device.type == "cpu" and not skipped.item()):
            return
        for kept, live in zip(self.kept, self.live, strict=True):
            live.copy_(torch.where(skipped > 0, kept, live))


def skips_on_device(host_sync: str, device: torch.device) -> bool:
    """train.host_sync: whether the skip is to be decided on the device (`log`; `auto`: on a GPU)."""
    return host_sync == "log" or (host_sync == "auto" and device.type == "cuda")


def make_guard(host_sync: str, state: RunState, max_bad_steps: int, optimizer: torch.optim.Optimizer,
               device: torch.device) -> NonFiniteGuard:
    """The device strategy where asked for and the optimizer can skip itself (fused AdamW), else the host's."""
    if skips_on_device(host_sync, device) and compat.skips_steps_on_device(optimizer):
        return DeviceGuard(state, max_bad_steps, device)
    return HostGuard(state, max_bad_steps)
