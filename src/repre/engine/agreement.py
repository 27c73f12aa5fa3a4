"""What the processes of a run agree on between steps without a sync per step: the images their batches skipped
(unreadable) or upscaled, and whether any process was asked to stop. A signal reaches one process, or each at
another step; all must stop at the same step (a collective that one process leaves hangs the others), so the
request counts once the processes have agreed on it: at the trainer's sync points (log and checkpoint steps,
the loop's end), or at every step where the host guard's one all-reduce carries it. One process: no
agreement, the counts go straight into the run's state and a signal stops the run at the next step."""

from __future__ import annotations

import torch

from repre.core import dist
from repre.engine.signals import GracefulStop
from repre.engine.state import RunState


class Agreement:
    """The run's image counts and its stop, agreed over the processes at `sync()`."""

    def __init__(self, state: RunState, device: torch.device) -> None:
        self.state, self.device = state, device
        self.signal: GracefulStop | None = None  # set while the loop runs
        self.pending = [0, 0]  # distributed: this process's skipped and upscaled images since the last sync
        self.agreed_stop = False  # distributed: whether any process was asked to stop, as the processes agreed

    @property
    def requested(self) -> bool:
        """Whether this process was asked to stop (a signal), agreed or not."""
        return self.signal is not None and self.signal.requested

    def add_images(self, batch: dict[str, torch.Tensor]) -> None:
        """Count a trained batch's skipped and upscaled images (CPU tensors: no device sync)."""
        skipped, upscaled = int(batch["skipped"]), int(batch.get("upscaled", 0))
        if dist.is_distributed():
            self.pending = [self.pending[0] + skipped, self.pending[1] + upscaled]
        else:
            self.state.skipped_images += skipped
            self.state.upscaled_images += upscaled

    def agree_stop(self, any_process: bool) -> None:
        """A stop request as the processes agreed on it elsewhere (the host guard's all-reduce)."""
        self.agreed_stop |= any_process

    def stopping(self) -> bool:
        """Whether to stop before the next step."""
        return self.agreed_stop if dist.is_distributed() else self.requested

    def sync(self) -> None:
        """Every process at the same step: the image counts summed over the processes, the stop agreed.
        Idempotent."""
        if not dist.is_distributed():
            return
        total = dist.all_reduce_sum(torch.tensor([*map(float, self.pending), float(self.requested)],
                                                 device=self.device))
        skipped, upscaled, stop = total.tolist()
        self.state.skipped_images += int(skipped)
        self.state.upscaled_images += int(upscaled)
        self.pending = [0, 0]
        self.agreed_stop = self.agreed_stop or stop > 0
