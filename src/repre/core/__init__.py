"""What every layer above may use: the launcher's environment (`launch`), collectives (`dist`), device and
precision (`runtime`), seeds and the processes' random state (`rng`), files written whole (`atomic`),
checkpoint files (`checkpoint_io`), a run's records (`run_files`), its evaluation results (`eval_results`) and
its lock (`run_lock`), schedules
(`schedules`), progress bars (`progress`), pictures (`pictures`), exact top-k search (`search`) and the PyTorch
interfaces that are not public (`compat`). Nothing here knows a model, a dataset or the training loop."""
