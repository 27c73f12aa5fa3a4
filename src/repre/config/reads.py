"""The config keys each command that loads a checkpoint reads from `--set`: a key it does not read is refused
(`repre.pretrained.refuse_unread`: it would change nothing), and its `--help` lists them (`listed`). An entry
ending in "." is a section, every key under it but those of `PRETRAINING_DATA`, which a command reads only where
it names them."""

from __future__ import annotations

from repre.config.schema import EVAL_TASKS

# the data keys only pre-training reads: which training images (data.subset; `repre embed` reads it too), where
# its pipeline's stages run, how streamed shards are shuffled and counted, DINO's local crops
PRETRAINING_DATA = ("data.subset", "data.device_stages", "data.shuffle_block", "data.stream_size",
                    "data.local_crops", "data.local_size")

# the run's settings, the same for any command (the other train.* keys are the pre-training's); not method.name:
# the encoder measured is the one the checkpoint's method evaluates and exports (DINO's teacher), whatever is set
RUN_KEYS = ("train.device", "train.precision", "train.seed", "train.num_workers", "train.progress")

EVAL = ("eval.", "data.", "model.", *RUN_KEYS)  # every `repre eval` task
# recon reads none of recon.*: its decoder is the checkpoint's as trained (norm_pix, upsample, the taps have no
# weights to refuse another value, and would turn what it measures into something else); no command after
# pre-training reads method.*: the checkpoint's method builds what it loads and picks the encoder evaluated
EVAL_TASK = {
    "finetune": ("aug.crop_ratio", "aug.hflip"),  # its crops' aspect ratios and flips (the probes fix their own)
}
# show reads its few images one by one (no loader, no workers) and draws on one process; not recon.*, as
# `repre eval recon`: the reconstruction it draws is the decoder's as trained
SHOW = ("data.", "model.", "train.device", "train.precision")
EMBED = ("data.", "data.subset", "model.", "eval.batch_size", *RUN_KEYS)  # the run's training images
IMAGES = ("data.", "data.subset")  # map and neighbors: which images are drawn (embed's: its data.subset too)
ENCODER = ("data.", "model.")  # `repre.load_encoder` (Python): the encoder and its input


def eval_reads(task: str) -> tuple[str, ...]:
    """The keys `repre eval TASK` reads: every task's, and the task's own."""
    return EVAL + EVAL_TASK.get(task, ())


def reads_key(key: str, reads: tuple[str, ...]) -> bool:
    """Whether a command that reads `reads` reads config key `key`."""
    return key in reads or (key.startswith(reads) and key not in PRETRAINING_DATA)


def listed(reads: tuple[str, ...]) -> str:
    """`reads` for a person: sections as "data.*" (with the pre-training's data keys it leaves out), a key or
    section that a listed section holds left out."""
    sections = tuple(r for r in reads if r.endswith("."))
    kept = [r for r in reads if not any(r != s and r.startswith(s) for s in sections)]
    unread = [k.removeprefix("data.") for k in PRETRAINING_DATA if k not in reads]
    but = f" (not {', '.join(unread)})" if unread else ""
    return ", ".join(r + "*" + (but if r == "data." else "") if r.endswith(".") else r for r in kept)


def other_tasks(task: str) -> tuple[str, ...]:
    """The sections of the evaluations other than `task` ("eval.linear.", ...): `repre eval TASK` reads none."""
    return tuple(f"eval.{t}." for t in EVAL_TASKS if t != task)


def idle_keys(task: str, protocol: str, segment_data: str) -> dict[str, str]:
    """The keys `repre eval TASK` leaves unread under these settings (eval.linear.protocol, eval.segment.data)
    -> why, for its refusal of them given with --set."""
    idle = {"eval.knn.enabled": "read by pre-training alone (whether its run ends with a k-NN)"}
    if task != "finetune":  # the others run the encoder frozen, in eval mode, with no backward through it
        idle["model.drop_path"] = ("read by fine-tuning alone: a frozen encoder runs without stochastic depth (a "
                                   "paper's linear protocol sets its own, eval.linear.protocol)")
        idle["model.grad_checkpointing"] = "read by fine-tuning alone: no gradient flows through a frozen encoder"
    quick = "read by pre-training alone (its k-NN every train.eval_every); `repre eval knn` reads {}"
    idle |= {f"eval.knn.quick_{part}": quick.format(f"eval.knn.{part}_subset") for part in ("train", "test")}
    if protocol != "quick":
        why = (f"read by the quick protocol alone (its sweep); the {protocol} protocol trains at one lr, "
               "eval.linear.lr (per 256 images)")
        idle |= {f"eval.linear.{k}": why for k in ("lrs", "wds", "val_fraction")}
    if segment_data == "fashion-scenes":
        idle["eval.segment.classes"] = ("read with eval.segment.data=folder alone: the scenes have their own 11 "
                                        "classes (background and Fashion-MNIST's 10)")
    return idle
