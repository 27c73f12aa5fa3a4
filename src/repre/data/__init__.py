"""Data: image sources (`sources`), the pre-training pipeline of views and its resumable state (`pipeline`),
and the loaders of evaluation (`evaluation`)."""
