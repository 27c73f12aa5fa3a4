"""The run engine: trainer loop, schedules, checkpoints, metrics, runtime and distributed helpers."""
