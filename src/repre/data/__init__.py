"""Data: image sources (`sources`: Fashion-MNIST, folders, shards, streams, generated images), which of their
images are read (`splits`), the views (`views`, and `device_views` where the device cuts them), the
pre-training pipeline and its resumable state (`pipeline`), the loaders of evaluation (`evaluation`) and the
dense probe's data (`scenes`, `seg_folder`)."""
