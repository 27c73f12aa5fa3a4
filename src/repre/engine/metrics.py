"""metrics.jsonl and TensorBoard: one writer for both, averaging train values over the log window; the lines a
resumed run writes again, dropped (`truncate_metrics`)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from repre.core import eval_results, run_files
from repre.core.atomic import replacing
from repre.core.dist import all_reduce_sum, gather_objects, rank, world_size
from repre.core.run_lock import RunLock

log = logging.getLogger("repre")


class MetricWriter:
    """Appends JSON lines to `folder/metrics.jsonl` and scalars to `folder/tb/`."""

    def __init__(self, folder: Path, tensorboard: bool = True, enabled: bool = True, after_step: int = 0,
                 end_redone: bool = False) -> None:
        """`enabled` False: writes nothing (the processes other than rank 0 of a distributed run). `after_step`:
        the step a run resumes from (0 for a run that starts, or resumes without a checkpoint); TensorBoard drops
        the events of later steps that a stopped run had written, as the resume truncates metrics.jsonl.
        `end_redone`: the run resumes at its last step to redo its end (the final k-NN, the reconstructions):
        that step's events go too, and its lines that stay in metrics.jsonl (the train line) are drawn again,
        so that each value is in TensorBoard once."""
        self.path = folder / run_files.METRICS
        self.enabled = enabled
        self.tb = None
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            purge = after_step + (0 if end_redone else 1)
            self.tb = SummaryWriter(str(folder / run_files.TB), purge_step=purge)
            for record in run_files.metric_lines(folder) if end_redone else ():
                if record.get("step") == after_step:
                    self._scalars(record, "")
            draw_evaluations(folder)  # `repre eval`'s points, a run of their own (older repres drew them here)

    def write(self, record: dict[str, Any], series: str = "") -> None:
        """`record` as a line of metrics.jsonl, and its numbers as TensorBoard scalars KIND/KEY`series` at its
        step (`series`: a suffix that keeps values measured otherwise apart, as the periodic k-NN's on its
        subsets from the final one's)."""
        if not self.enabled:
            return
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v  # JSON has no NaN: null
                  for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._scalars(record, series)

    def _scalars(self, record: dict[str, Any], series: str) -> None:
        if self.tb is None:
            return
        for key, value in record.items():
            if (key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):  # flags (eval lines' knn_quick) are not series
                self.tb.add_scalar(f"{record['kind']}/{key}{series}", value, record["step"])

    def text(self, tag: str, text: str, step: int) -> None:
        """`text` in TensorBoard's text tab under `tag` at `step`, shown as written (a code block)."""
        if self.tb is not None:
            fenced = "\n".join("    " + line for line in text.splitlines())  # markdown: indented = verbatim
            self.tb.add_text(tag, fenced, step)

    def image(self, tag: str, picture: Any, step: int) -> None:
        """A picture (PIL RGB) in TensorBoard's images under `tag` at `step`."""
        if self.tb is not None:
            import numpy as np

            self.tb.add_image(tag, np.asarray(picture), step, dataformats="HWC")

    def flush(self) -> None:
        """TensorBoard's queued events onto the disk (metrics.jsonl is written line by line)."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


EVAL_POINTS = "repre_eval.json"  # in a run's tb/: {tag: {step: value}} of the points `add_evaluation` drew
EVAL_RUN = "repre_eval"  # the folder under a run's tb/ whose one event file holds those points
EVAL_LOCK = ".repre_eval.lock"  # in tb/: one `repre eval` at a time changes them


def _drawn(run: Path) -> dict[str, dict[str, float]]:
    """`run`'s EVAL_POINTS ({} where it has none, or one that cannot be read)."""
    try:
        return json.loads((run / run_files.TB / EVAL_POINTS).read_text())
    except (OSError, ValueError):
        return {}


def _in_order(drawn: dict[str, dict[str, float]]) -> list[tuple[str, int, float]]:
    return [(tag, step, value) for tag, points in drawn.items()
            for step, value in sorted((int(step), value) for step, value in points.items())]


@contextlib.contextmanager
def _points_locked(tb: Path) -> Iterator[None]:
    """One process at a time reads and rewrites a run's evaluation points (two `repre eval` of its checkpoints
    ending together would each drop the other's point): waits for the other, a few seconds at most."""
    if not os.access(tb, os.W_OK):  # said so, not as a lock that cannot be taken
        raise PermissionError(f"{tb} is not writable")
    lock = RunLock(tb, EVAL_LOCK, f"{tb / EVAL_POINTS} is being written", remove=True)
    for _ in range(300):
        if (why := lock.acquire()) is None:
            break
        time.sleep(0.1)
    else:
        raise OSError(why)
    try:
        yield
    finally:
        lock.unlock()


def _write_points(tb: Path, drawn: dict[str, dict[str, float]]) -> None:
    """Every point, in step order, into one new event file under tb/EVAL_RUN, the file before it removed:
    TensorBoard expects a tag's steps to rise, and a point at a lower step than one read before it drops the
    higher ones from the chart (its reservoir takes it for a restart). A run of their own, apart from the
    training's, which a resumed run's purge of its later steps leaves alone."""
    from torch.utils.tensorboard import SummaryWriter

    folder = tb / EVAL_RUN
    before = set(folder.glob("events.out.tfevents.*"))
    writer = SummaryWriter(str(folder))
    try:
        for tag, step, value in _in_order(drawn):
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()
    for old in before:  # the new file has them all
        old.unlink(missing_ok=True)


def draw_evaluations(run: Path) -> None:
    """Draw `run`'s evaluation points again (a resumed run: those an older repre drew among the training's
    events went with its purge)."""
    tb = run / run_files.TB
    try:
        with _points_locked(tb):
            if drawn := _drawn(run):
                _write_points(tb, drawn)
    except OSError as exc:
        log.warning("the evaluations' points are not drawn again in %s: %s", tb / EVAL_RUN, exc)


def add_evaluation(run: Path, result: dict[str, Any]) -> str | None:
    """A `repre eval` result of one of `run`'s checkpoints as a scalar in the run's TensorBoard, at that
    checkpoint's step (tb/EVAL_RUN, beside the training's run): evaluating several checkpoints, in any order,
    draws the task's curve. Only a result measured as the run's own config says (no `--set` that changes what
    it measures: `eval_results.measured_otherwise`). Returns the tag written, or None (no run TensorBoard
    there, other settings, or the point drawn already)."""
    of = result.get("checkpoint") or {}
    given = [str(s) for s in of.get("set", [])]
    tb = run / run_files.TB
    if not tb.is_dir() or eval_results.measured_otherwise(given, result["task"]):
        return None
    tag, step = f"repre_eval/{result['task']}_{result['metric']}", int(of.get("step", 0))
    try:
        with _points_locked(tb):
            drawn = _drawn(run)
            if drawn.get(tag, {}).get(str(step)) == result["value"]:  # the same checkpoint evaluated again alike
                return None
            drawn.setdefault(tag, {})[str(step)] = result["value"]
            _write_points(tb, drawn)
            with replacing(tb / EVAL_POINTS) as tmp:
                tmp.write_text(json.dumps(drawn, indent=1))
    except OSError as exc:  # a run folder one may read, not write: the result itself stands
        log.warning("the result is not added to %s: %s", tb, exc)
        return None
    return tag


def rounded(value: Any) -> Any:
    """A float as a metrics line writes it: to the 7 significant digits a float32 holds (0.04, not
    0.03999999910593033); other values as they are."""
    return float(f"{value:.7g}") if isinstance(value, float) else value


class WindowMeter:
    """Means of per-step tensors kept on the device; `.item()` only when the window is read (one sync).
    Non-finite values (a skipped step's loss) are left out of their key's mean; a key with no finite value
    in the window reads as None (JSON null). Distributed: `read` averages over all processes too (a collective:
    every process reads at the same steps, with the same keys)."""

    def __init__(self, device: torch.device | None = None) -> None:
        """`device`: where the window's sums are reduced (the training device; NCCL needs CUDA tensors)."""
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for key, value in values.items():
            v = torch.as_tensor(value).detach().float()
            finite = torch.isfinite(v)
            v = torch.where(finite, v, torch.zeros_like(v))
            self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()
            self.counts[key] = self.counts[key] + finite.float() if key in self.counts else finite.float()

    def read(self) -> dict[str, float | None]:
        """The window's means (over its steps and all processes), to the 7 significant digits of the float32 sums
        (0.04, not 0.03999999910593033); the window starts anew."""
        totals = self._totals()
        self.sums, self.counts = {}, {}
        return {k: (rounded(s / n) if n else None) for k, (s, n) in totals.items()}

    def state_dict(self) -> dict[str, Any]:
        """The window so far, for a checkpoint written between train lines: each process's own [sum, count] by
        key, in rank order under "ranks" (a collective). A resumed process goes on with its own sums, so the
        resumed line adds the same numbers in the same order as the uninterrupted one."""
        own = {k: [float(self.sums[k]), float(self.counts[k])] for k in self.sums}
        return {"ranks": gather_objects(own)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on with a checkpointed window. Written by another number of processes (or by an earlier version,
        which kept the processes' totals: {key: [sum, count]}), rank 0 goes on with the totals, scaled to this
        number of processes so that every step weighs the same in the line, and the others with zeros for the
        same keys (every process keeps the same keys in the same order: `read` pairs them)."""
        ranks = state.get("ranks", [state] if state else [])
        if len(ranks) == world_size():
            own = ranks[rank()]
        else:  # scaled to this count of processes, each of whose steps adds one value a process (an earlier
            # version's totals: their count of processes unknown, as they are)
            scale = world_size() / len(ranks) if "ranks" in state else 1.0
            totals = {k: [scale * sum(r[k][i] for r in ranks) for i in (0, 1)] for k in (ranks[0] if ranks else {})}
            own = totals if rank() == 0 else {k: [0.0, 0.0] for k in totals}
        self.sums = {k: torch.tensor(s, device=self.device) for k, (s, _) in own.items()}
        self.counts = {k: torch.tensor(n, device=self.device) for k, (_, n) in own.items()}

    def __bool__(self) -> bool:
        """Whether the window holds a step (the same on every process)."""
        return bool(self.sums)

    def _totals(self) -> dict[str, tuple[float, float]]:
        """(sum, count) by key over the window and all processes: one reduction, one sync."""
        keys = list(self.sums)
        if not keys:
            return {}
        accelerated = (v.device for v in self.sums.values() if v.device.type != "cpu")
        device = self.device or next(accelerated, torch.device("cpu"))
        totals = all_reduce_sum(torch.stack([torch.stack([self.sums[k], self.counts[k]]).to(device) for k in keys]))
        return {k: (s, n) for k, (s, n) in zip(keys, totals.tolist(), strict=True)}


def truncate_metrics(path: Path, step: int, final: bool = False) -> None:
    """metrics.jsonl (`path`) as it stood at the checkpoint of `step` that a run resumes from: the lines written
    after it go (they will be written again), as does a line cut short by a crash or a full disk (said).
    `final`: the checkpoint is the run's last and the run's end (the final k-NN, written after it at its
    step) is redone: those eval lines go too. TensorBoard's own are purged by `MetricWriter(after_step=...)`."""
    if not path.is_file():
        return
    keep, cut = [], 0
    for line in filter(None, path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            cut += 1
            continue
        if not isinstance(record, dict):
            continue
        at = record.get("step", 0)
        redone_eval = final and at == step and record.get("kind") == "eval"
        if at <= step and not redone_eval:
            keep.append(line)
    if cut:
        log.warning("%s: left out %d line(s) cut short when the run stopped", path, cut)
    with replacing(path) as tmp:
        tmp.write_text("".join(f"{ln}\n" for ln in keep))
