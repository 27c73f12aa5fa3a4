"""Data: image sources (`sources`: Fashion-MNIST, folders, shards, streams, generated images, your own code's
datasets: `python_source`), which of their images are read (`splits`) and in which order (`sampler`), their
labels (`labels`), the views (`views`, and `device_views` where the device cuts them), the pre-training
pipeline, its data workers
(`workers`) and its resumable state (`pipeline`), the loaders of evaluation (`evaluation`) and the dense
probe's data (`scenes`, `seg_folder`)."""
