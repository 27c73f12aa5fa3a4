"""Evaluations that a pre-training run reports: a quick k-NN every `train.eval_every` steps, the reconstruction
picture (recon.png, and in TensorBoard) when the run ends, and the k-NN of the summary when it completes.
Passed to the trainer by `repre.pretraining.pretrain` (the engine imports no evaluation module)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from repre.config import Config
from repre.core import dist, run_files
from repre.core.compat import eager
from repre.engine.callbacks import Callback
from repre.engine.metrics import MetricWriter
from repre.errors import UserError
from repre.eval.knn import knn_eval
from repre.eval.recon import save_recon_grid

if TYPE_CHECKING:
    from repre.engine.trainer import Trainer

log = logging.getLogger("repre")


def with_quick_subsets(cfg: Config) -> Config:
    """The config of a k-NN during training: the eval.knn.quick_* subsets."""
    k = cfg.eval.knn
    knn = dataclasses.replace(k, train_subset=k.quick_train, test_subset=k.quick_test)
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, knn=knn))


class RunKNN:
    """The run's k-NN top-1 of the encoder that export writes, logged as an eval line (the model is left in
    train mode). Data it cannot measure (no labels, streamed shards) is said once: the reason holds for the
    whole run, and the settings it names are for `repre eval knn` on the run's checkpoint, not for this run."""

    def __init__(self) -> None:
        self.skipped = False

    def line(self, trainer: Trainer, writer: MetricWriter, is_quick: bool, say: str = "") -> float | None:
        """`say`: as `knn_eval`'s."""
        if self.skipped:
            return None
        cfg = with_quick_subsets(trainer.cfg) if is_quick else trainer.cfg
        try:
            top1 = eager(knn_eval, trainer.model.method.eval_encoder, cfg, trainer.rt, say=say)["value"]
        except UserError as exc:
            self.skipped = True
            log.warning("k-NN skipped in this run: %s%s", exc, self._later(trainer, str(exc)))
            return None
        finally:
            trainer.model.train()
        writer.write({"step": trainer.state.step, "kind": "eval", "knn_top1": top1, "knn_quick": is_quick},
                     series="_quick" if is_quick else "")  # TensorBoard: on the subsets, one curve; the final apart
        return top1

    @staticmethod
    def _later(trainer: Trainer, reason: str) -> str:
        if "--set" not in reason or "`repre eval " in reason:  # none, or the reason names its command
            return ""
        when = "" if trainer.state.step >= trainer.total else ", once the run has a checkpoint"
        return f" (those settings are for `repre eval knn --checkpoint {trainer.out}`{when})"


class PeriodicKNN(Callback):
    """A quick k-NN every `every` steps before the last, on rank 0 (the others wait for it at their next
    collective: the checkpoint's, or the next step's)."""

    def __init__(self, every: int, knn: RunKNN) -> None:
        self.every, self.knn = every, knn

    def on_step_end(self, trainer: Trainer, writer: MetricWriter) -> None:
        step = trainer.state.step
        if step % self.every == 0 and step < trainer.total and dist.is_main():
            self.knn.line(trainer, writer, is_quick=True)


class ReconPicture(Callback):
    """recon.png and TensorBoard's `recon` image when the run ends, completed or stopped (a resumed run draws
    it again at its end): views and their reconstructions (`repre.eval.recon.recon_sheet`)."""

    def on_fit_end(self, trainer: Trainer, writer: MetricWriter, completed: bool) -> dict[str, Any]:
        if dist.is_main() and trainer.state.step > 0:
            path = trainer.out / run_files.RECON_PNG
            picture = eager(save_recon_grid, trainer.model, trainer.cfg, trainer.data.source, path, trainer.rt)
            writer.image("recon", picture.raster(), trainer.state.step)
            log.info("views and their reconstructions at step %d: %s", trainer.state.step, path)
        return {}


class FinalKNN(Callback):
    """The summary's `knn_top1` when the run completes (rank 0; the others report None)."""

    def __init__(self, knn: RunKNN) -> None:
        self.knn = knn

    def on_fit_end(self, trainer: Trainer, writer: MetricWriter, completed: bool) -> dict[str, Any]:
        if not (completed and dist.is_main()):
            return {"knn_top1": None}
        say = "the summary's k-NN, after the last step (none: --set eval.knn.enabled=false)"
        return {"knn_top1": self.knn.line(trainer, writer, is_quick=False, say=say)}


def run_callbacks(cfg: Config) -> list[Callback]:
    """The evaluations a pre-training run with `cfg` reports."""
    callbacks: list[Callback] = []
    knn = RunKNN()
    if cfg.train.eval_every:
        callbacks.append(PeriodicKNN(cfg.train.eval_every, knn))
    if cfg.recon.enabled:
        callbacks.append(ReconPicture())
    if cfg.eval.knn.enabled:
        callbacks.append(FinalKNN(knn))
    return callbacks
