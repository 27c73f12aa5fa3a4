"""The run variables a checkpoint keeps besides the modules and the optimizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunState:
    """Run variables restored on resume besides the modules and the optimizer."""

    step: int = 0
    skipped_images: int = 0
    upscaled_images: int = 0  # images smaller than data.image_size, upscaled by their crops
    images_seen: int = 0
    train_seconds: float = 0.0  # the steps' wall time, data waits included, compiling not
    compile_seconds: float = 0.0  # train.compile: the first step of each start (its data wait not), which compiles
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    bad_streak: int = 0  # consecutive skipped steps, now
    last: dict[str, float | None] = field(default_factory=dict)  # the last logged window's means

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint's "run" entry holds (the step is kept apart, as "step")."""
        return {k: v for k, v in asdict(self).items() if k != "step"}

    def load(self, step: int, run: dict[str, Any]) -> None:
        """Restore from a checkpoint's "step" and "run" entries (entries added since read as 0)."""
        self.step = int(step)
        self.skipped_images = int(run["skipped_images"])
        self.images_seen = int(run["images_seen"])
        self.train_seconds = float(run["train_seconds"])
        self.compile_seconds = float(run.get("compile_seconds", 0.0))
        self.nonfinite_steps = int(run.get("nonfinite_steps", 0))
        # a run stopped by a signal within a streak of skipped steps goes on counting it, as it would have
        self.bad_streak = int(run.get("bad_streak", 0))
        self.upscaled_images = int(run.get("upscaled_images", 0))
        self.last = dict(run.get("last", {}))  # the last logged window: a resumed run's summary reports it
