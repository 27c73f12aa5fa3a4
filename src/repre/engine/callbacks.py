"""What the training loop calls around its steps: monitors and evaluations, kept out of the loop itself.

A callback overrides the hooks it needs. The engine's own (loss balance, loss trends, collapse watch) are
here; evaluations during and after training (k-NN, the reconstruction picture) are passed in by
`repre.pretraining.pretrain`, as the engine imports no evaluation module.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from repre.config import Config
from repre.engine.diagnostics import TrendWatch, loss_balance
from repre.engine.metrics import MetricWriter
from repre.methods.base import TEACHER_BATCH_ENTROPY, TEACHER_ENTROPY, Method

if TYPE_CHECKING:
    from repre.engine.trainer import Trainer

log = logging.getLogger("repre")

COLLAPSE_STD = 0.1  # embedding_std below this: a sign of collapse (`CollapseWatch`)
# the prototypes a batch's teacher outputs spread over (exp of teacher_batch_entropy) below this: one takes them
# all, a sign of collapse (`CollapseWatch`), on batches of at least FEW_IMAGES images (a smaller batch spreads
# over few prototypes when healthy too: the two crops of an image agree) and heads of at least FEW_PROTOTYPES
# (over 2 prototypes a balanced batch is at the line itself)
DOMINATED, FEW_IMAGES, FEW_PROTOTYPES = 2.0, 8, 4


class Callback:
    """Hooks of the training loop; each does nothing unless overridden."""

    def on_forward(self, trainer: Trainer, out: dict[str, torch.Tensor]) -> None:
        """Inside a step, after the forward pass (the losses' graph is alive) and before the backward pass."""

    def log_values(self, trainer: Trainer) -> dict[str, float]:
        """Values to add to the next train line of metrics.jsonl."""
        return {}

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        """After a train line, on rank 0, when every value of the window is finite (window averages)."""

    def on_step_end(self, trainer: Trainer, writer: MetricWriter) -> None:
        """After a step's bookkeeping (its train line included), before its checkpoint."""

    def on_fit_end(self, trainer: Trainer, writer: MetricWriter, completed: bool) -> dict[str, Any]:
        """When the loop has ended and its checkpoint is written: entries for the run's summary. A signal may
        interrupt it (`signals.Interrupted`: the hooks after it do not run on that process), so it uses no
        collective: the other processes would wait at it for good."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on as the uninterrupted one would (a monitor's recent lines and
        warnings, values measured for the next train line), in plain values a checkpoint holds; kept by rank 0,
        which reads and writes the train lines."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back `state_dict()`'s values."""


def monitor_states(callbacks: list[Callback]) -> dict[str, dict[str, Any]]:
    """The callbacks' states that are not empty, by class name (one callback of a class a run)."""
    return {type(c).__name__: state for c in callbacks if (state := c.state_dict())}


def load_monitor_states(callbacks: list[Callback], states: dict[str, dict[str, Any]] | None) -> None:
    """Give each callback its state from a checkpoint (those a resumed run adds or drops start fresh)."""
    for callback in callbacks:
        if (state := (states or {}).get(type(callback).__name__)) is not None:
            callback.load_state_dict(state)


class LossBalance(Callback):
    """Every `every` steps: the gradient each loss sends into the encoder and their cosine
    (`repre.engine.diagnostics.loss_balance`), logged with the next train line."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.pending: dict[str, float] = {}

    def on_forward(self, trainer: Trainer, out: dict[str, torch.Tensor]) -> None:
        if (trainer.state.step + 1) % self.every:
            return
        model = trainer.model
        balance = loss_balance(model.encoder, out["loss_contrastive"], model.recon_weight * out["loss_recon"],
                               trainer.scaler.current())
        self.pending = {k: float(v) for k, v in balance.items()}

    def log_values(self, trainer: Trainer) -> dict[str, float]:
        values, self.pending = self.pending, {}
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.pending} if self.pending else {}  # measured, its train line not yet written

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state["pending"])


class LossTrend(Callback):
    """A warning when one loss keeps rising while the other falls (`TrendWatch`)."""

    def __init__(self) -> None:
        self.trend = TrendWatch()

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        self.trend.update(values["loss_contrastive"], values["loss_recon"])

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(v) for v in self.trend.history], "warned": sorted(self.trend.warned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trend.history = [tuple(v) for v in state["history"]]
        self.trend.warned = set(state["warned"])


class CollapseWatch(Callback):
    """One warning a run when signs of collapse last: embeddings collapsing to a point (`embedding_std` under
    `COLLAPSE_STD`), or (DINO) a teacher whose outputs are near uniform over its `prototypes` (entropy
    above 95% of the uniform's), or whose outputs over a batch fall on one prototype (the two collapses of
    DINO's section 5.3: `TEACHER_BATCH_ENTROPY` under log `DOMINATED`). It reads the train lines after the first
    10% of the run (a fresh encoder's features may be anisotropic, a fresh teacher's outputs near uniform) and
    warns when `SHARE` of the last n lines show a sign, n spanning `SPAN` of the run (2 to 20 lines), or when the
    run completes on 2 or more such lines in a row. Its lines and its warning are in the checkpoint: a resumed run
    of the same length warns as the uninterrupted one would.

    Why lasting: the Fashion-MNIST DINO preset's teacher brushes the line for one 10-step window near step 200
    and trains well; a teacher that collapses to uniform stays there for hundreds of steps (docs/results.md)."""

    SHARE, SPAN, LINES = 0.8, 0.05, (2, 20)

    def __init__(self, prototypes: int | None, log_every: int, ema: bool = True, batch_size: int = FEW_IMAGES
                 ) -> None:
        """`prototypes`: DINO's outputs (`Method.prototypes`; None: no teacher entropy to watch); `log_every`:
        steps a train line; `ema`: whether the method has a momentum encoder (the warning then says to check its
        momentum); `batch_size`: the images of a step (the global batch)."""
        self.uniform = math.log(max(prototypes, 2)) if prototypes else math.inf
        watched = (prototypes or 0) >= FEW_PROTOTYPES and batch_size >= FEW_IMAGES
        self.dominated = math.log(DOMINATED) if watched else -math.inf
        self.log_every, self.ema = log_every, ema
        self.recent: deque[bool] | None = None  # whether each of the last n lines shows a sign
        self.why = ""  # the latest sign
        self.in_a_row = 0  # the lines up to the latest that show a sign
        self.warned_at: int | None = None  # the step of the warning
        self.resumed: list[bool] = []  # a resumed run's recent lines, until the run's length sizes `recent`

    def sign(self, values: dict[str, float]) -> str | None:
        """What in one train line's values looks like collapse (None: nothing)."""
        if values.get("embedding_std", 1.0) < COLLAPSE_STD:
            return (f"embedding_std {values['embedding_std']:.3f} (about 1 when healthy, 0 when every image maps "
                    "to one point)")
        if values.get(TEACHER_ENTROPY, 0.0) > 0.95 * self.uniform:
            return f"{TEACHER_ENTROPY} {values[TEACHER_ENTROPY]:.2f} of at most {self.uniform:.2f} (uniform outputs)"
        if values.get(TEACHER_BATCH_ENTROPY, math.inf) < self.dominated:
            spread = values[TEACHER_BATCH_ENTROPY]
            return (f"{TEACHER_BATCH_ENTROPY} {spread:.2f}: the batch's teacher outputs on about "
                    f"{math.exp(spread):.1f} of {round(math.exp(self.uniform))} prototypes (one dominates)")
        return None

    def on_log(self, trainer: Trainer, values: dict[str, float]) -> None:
        if self.warned_at is not None or trainer.state.step <= 0.1 * trainer.total:
            return
        if self.recent is None:
            lines = round(self.SPAN * trainer.total / self.log_every)
            self.recent = deque(self.resumed, maxlen=min(max(lines, self.LINES[0]), self.LINES[1]))
        why = self.sign(values)
        self.recent.append(why is not None)
        self.in_a_row = self.in_a_row + 1 if why else 0
        self.why = why or self.why
        n = self.recent.maxlen or 0
        if len(self.recent) == n and sum(self.recent) >= self.SHARE * n:
            self.warn(trainer.state.step, f"in {sum(self.recent)} of the last {n} train lines")

    def on_fit_end(self, trainer: Trainer, writer: MetricWriter, completed: bool) -> dict[str, Any]:
        # a collapse in the run's last lines; a stopped run goes on counting when it resumes (its final checkpoint,
        # written before this hook, holds the count, not a warning made here)
        if completed and self.warned_at is None and self.in_a_row >= 2:
            self.warn(trainer.state.step, f"in the run's last {self.in_a_row} train lines")
        return {}

    def state_dict(self) -> dict[str, Any]:
        recent = list(self.recent) if self.recent is not None else self.resumed
        return {"recent": recent, "why": self.why, "in_a_row": self.in_a_row, "warned_at": self.warned_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumed, self.recent = list(state["recent"]), None  # sized by the resumed run's length
        self.why, self.in_a_row, self.warned_at = state["why"], state["in_a_row"], state["warned_at"]

    def warn(self, step: int, where: str) -> None:
        self.warned_at = step
        check = ("the lr, the temperatures (DINO: teacher_temp, center_momentum) and the EMA momentum" if self.ema
                 else "the lr and the weight decay")
        log.warning("step %d: %s, %s: the run is collapsing; check %s", step, self.why, where, check)


def engine_callbacks(cfg: Config, method: Method) -> list[Callback]:
    """The monitors every run has: loss balance and loss trends with the RePre branch (trends only where the
    method's loss level measures fit: `Method.loss_tracks_fit`), and the collapse watch."""
    monitors: list[Callback] = []
    if cfg.measures_loss_balance:
        monitors.append(LossBalance(cfg.train.diagnose_every))
    if cfg.recon.enabled and method.loss_tracks_fit:
        monitors.append(LossTrend())
    return [*monitors, CollapseWatch(method.prototypes, cfg.train.log_every, ema=bool(method.ema_pairs()),
                                     batch_size=cfg.train.batch_size)]
