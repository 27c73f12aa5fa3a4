"""What every layer above may use: collectives (`dist`), device and precision (`runtime`), the processes' random
state (`rng`), checkpoint files (`checkpoint_io`), a run's records (`run_files`), schedules (`schedules`) and
progress bars (`progress`). Nothing here knows a model, a dataset or the training loop."""
