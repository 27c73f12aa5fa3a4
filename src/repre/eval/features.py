"""The loop of the evaluations that read frozen features once (k-NN, the quick linear probe, the dense probe,
`repre embed`, and fine-tuning's test pass): a module in eval mode, no gradients, autocast on the run's device,
each batch's outputs brought back to the CPU as float32; and the pooled, L2-normalized embedding that k-NN,
`repre embed` and `repre neighbors` read. (The papers' linear probes read each augmented batch as they train:
`lincls.frozen_features`.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from repre.config import Config
from repre.core import dist
from repre.core.compat import workers_stopped
from repre.core.progress import progress_bar
from repre.core.runtime import Runtime
from repre.errors import UserError
from repre.models.backbone import Backbone

Extra = TypeVar("Extra")
NONE_READ = "no image of the evaluation could be read (each is named in a warning above)"


def bar_name(cfg: Config, name: str) -> str:
    """`name` for a progress bar of an evaluation, or "" for none: bars follow train.progress, on rank 0."""
    return name if cfg.train.progress and dist.is_main() else ""


@torch.no_grad()
def frozen_batches(module: nn.Module, batches: Iterable[tuple[torch.Tensor, Extra]], rt: Runtime,
                   fn: Callable[[torch.Tensor], torch.Tensor],
                   desc: str = "") -> Iterator[tuple[torch.Tensor | None, Extra]]:
    """`fn(x)` for each (x, extra) of `batches` (x: normalized images [B, 3, H, W]), one batch at a time ->
    (the output float32 on the CPU, or None for an x of no rows; `extra` as given). `module` runs in eval mode
    and goes back to its mode when the iteration ends. `desc`: a progress bar so named (`bar_name`), on a
    terminal or in a log, as the training's."""
    was_training = module.training
    module.eval()
    loaded = iter(batches)  # a loader's workers stop when the iteration ends, an exception included
    try:
        total = len(batches)  # type: ignore[arg-type]  # an Iterable: its length where it has one
    except TypeError:  # a generator, or a loader of an iterable dataset
        total = None
    try:
        with workers_stopped(loaded):
            for x, extra in progress_bar(loaded, desc=desc, unit="batch", leave=False, total=total) if desc else loaded:
                if len(x) == 0:
                    yield None, extra
                    continue
                with torch.autocast(rt.device.type, dtype=rt.dtype, enabled=rt.amp):
                    out = fn(x.to(rt.device, non_blocking=True))
                yield out.float().cpu(), extra
    finally:
        module.train(was_training)


def gathered(
    batches: Iterable[tuple[torch.Tensor | None, torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output [B, ...] or None, labels [B] or None) batches -> (the outputs concatenated along dim 0, the labels
    concatenated or None). Raises UserError when no batch had an image."""
    outputs, labels = [], []
    for out, y in batches:
        if out is None:
            continue
        outputs.append(out)
        if y is not None:
            labels.append(y)
    if not outputs:
        raise UserError(NONE_READ)
    out = torch.cat(outputs)
    check_finite(out)
    return out, (torch.cat(labels) if labels else None)


def check_finite(out: torch.Tensor, remedy: str = "evaluate an earlier one", where: str = "") -> None:
    """A UserError where a row of `out` ([N, ...], one an image) is not finite: every vote or prediction of such a
    row would be class 0, every similarity NaN, a number that measures nothing. `where`: which images these are;
    `remedy`: what to do with a diverged checkpoint, for the message."""
    bad = int((~torch.isfinite(out.flatten(1))).any(dim=1).sum())
    if bad:
        raise UserError(f"the outputs of {bad} of {len(out)} images{where} are not finite (NaN or inf): the weights "
                        f"are not finite (a diverged run's checkpoint: {remedy}), or the forward "
                        "overflowed in reduced precision (--set train.precision=fp32)")


def frozen_outputs(module: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], rt: Runtime,
                   fn: Callable[[torch.Tensor], torch.Tensor], desc: str = "",
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`frozen_batches` gathered: (the outputs, float32 on the CPU; the labels or None)."""
    return gathered(frozen_batches(module, batches, rt, fn, desc))


def pooled_embeddings(encoder: Backbone, batches: Iterable[tuple[torch.Tensor, Extra]],
                      rt: Runtime, desc: str = "") -> Iterator[tuple[torch.Tensor | None, Extra]]:
    """The encoder's pooled features, L2-normalized on the CPU in float32, one batch at a time: (x [B, 3, H, W],
    extra) -> ([B, D] or None for an x of no rows, extra). What k-NN compares and `repre embed` writes."""
    for out, extra in frozen_batches(encoder, batches, rt, lambda x: encoder(x)[0], desc):
        yield (None if out is None else F.normalize(out, dim=1)), extra
