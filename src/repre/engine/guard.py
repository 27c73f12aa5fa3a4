"""The non-finite guard: an optimizer step whose loss or gradients are not finite is skipped (weights and
optimizer state stay as they were) and counted; `train.max_bad_steps` skipped steps in a row stop the run.

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
    a step the loss scaler drops for overflowing gradients reads 0, the scaler's own business); `stop`: whether a
    process asked to stop, where the step's agreement carried the request (the host strategy's one all-reduce
    carries both), else False."""

    skipped: torch.Tensor
    stop: bool


class NonFiniteGuard:
    """Takes the optimizer step unless it is non-finite; counts skips in `state`; sets `diverged`."""

    def __init__(self, state: RunState, max_bad_steps: int) -> None:
        self.state, self.max_bad_steps = state, max_bad_steps
        self.diverged = False

    def start(self) -> None:
        """Called when the loop starts (after a resume: the counts go on from the checkpoint's)."""

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        """Take the optimizer step (through `scaler`) unless `finite` (a bool scalar on the device: this
        process's loss and gradients) is false on any process."""
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
    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        s, stop = self.state, False
        if dist.is_distributed():  # one process's non-finite step skips it everywhere; a stop anywhere stops all
            flags = torch.stack([(~finite).float(), torch.tensor(float(stop_requested), device=finite.device)])
            bad, stops = dist.all_reduce_sum(flags).tolist()  # the step's one sync
            ok, stop = bad == 0, stops > 0
        else:
            ok = bool(finite)  # the step's one sync
        if ok:  # a non-finite step must not reach the weights
            scaler.step(optimizer)
            s.bad_streak = 0
            return Outcome(torch.tensor(0.0), stop)
        optimizer.zero_grad(set_to_none=True)
        s.nonfinite_steps += 1
        s.bad_streak += 1
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

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor,
             loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool) -> Outcome:
        bad = (~finite).float()
        if dist.is_distributed():  # one process's non-finite loss skips the step everywhere (async: no host sync)
            bad = dist.all_reduce_max(bad)
        if scaler.is_enabled():  # fp16: the scaler passes its own found_inf (overflowing gradients)
            scaler.step(optimizer)
        else:
            compat.step_unless(optimizer, bad)
        self.total += bad
        self.streak = (self.streak + 1) * bad
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


def skips_on_device(host_sync: str, device: torch.device) -> bool:
    """train.host_sync: whether the skip is to be decided on the device (`log`; `auto`: on a GPU)."""
    return host_sync == "log" or (host_sync == "auto" and device.type == "cuda")


def make_guard(host_sync: str, state: RunState, max_bad_steps: int, optimizer: torch.optim.Optimizer,
               device: torch.device) -> NonFiniteGuard:
    """The device strategy where asked for and the optimizer can skip itself (fused AdamW), else the host's."""
    if skips_on_device(host_sync, device) and compat.skips_steps_on_device(optimizer):
        return DeviceGuard(state, max_bad_steps, device)
    return HostGuard(state, max_bad_steps)
