"""The config's sections: every key a typed field of a dataclass. A field's comment is its documentation
(docs/gen_configuration.py writes docs/configuration.md from them), its section's `ranges` says its valid
values (`checks.RULES`) and its section's `run_only` whether it changes how a run goes rather than what it
computes (`RUN_ONLY_KEYS`)."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

DEFAULT_PRESET = "fmnist-mocov3-repre"
REMOTE_ROOTS = ("http://", "https://", "pipe:")  # data.root values read as streams (data.shard_access=auto)
URL = re.compile(r"[a-z][a-z0-9+.-]*://")  # a root kept as given (s3://, gs://, ...), not made a local path
# the longest run: its schedules are precomputed a value a step (beyond it, they alone outgrow a machine's memory)
MAX_STEPS = 10**8


class Section:
    """Base of the config's sections (and of `Config`): an attribute set from Python must be one of its keys. A
    misspelt one (`cfg.train.max_step = 2`) raises AttributeError naming the nearest key (kept on the object, it
    would be left out when the config is checked again, and the run would go on with the preset's value)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        keys = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        if name not in keys:
            near = difflib.get_close_matches(name, keys, n=1)
            raise AttributeError(f"{type(self).__name__} has no key {name!r}; "
                                 + (f"did you mean {near[0]!r}?" if near else f"its keys: {', '.join(keys)}"))
        object.__setattr__(self, name, value)


def _absolute(root: str | None) -> str | None:
    """A local root as an absolute path: ~/... in the user's home (the shell leaves `--set data.root=~/x` as it
    is), a relative one from the current directory, so that the run's config names the same images from any
    directory (`repre eval`, `--resume`). Remote roots (pipe:, or any URL: scheme://) stay as they are."""
    if not isinstance(root, str) or not root or root.startswith(REMOTE_ROOTS) or URL.match(root):
        return root
    return os.path.abspath(os.path.expanduser(root))


@dataclass
class DataConfig(Section):
    """What images to read and at which size."""

    # the dataset: Fashion-MNIST, a folder of images, tar shards, generated images, or python: a dataset of your
    # own code (data.source)
    name: Literal["fashion-mnist", "folder", "synthetic", "shards", "python"] = "fashion-mnist"
    # null: the dataset's default place (Fashion-MNIST: /usr/share/datasets/fashion-mnist); a local path is kept
    # absolute (a relative one from the current directory), so that a run finds its images from any directory
    # (data.name=python: where it names a file or folder that exists; another value is passed on as given)
    root: str | None = None
    # data.name=python: "module:function" of your own code (docs/data.md), called as function(split, root) with
    # split "train" or "test" and data.root; it returns a dataset: len() and [i] -> (image, label) (an image:
    # PIL, an array HxW or HxWxC, or a tensor CxHxW), its `classes` the labels' names where it has labels
    source: str | None = None
    subset: int | None = None  # N training images (from files: spread over them, every class)
    image_size: int = 28  # side of the global views (the crops the encoder sees), in pixels
    local_crops: int = 0  # DINO multi-crop: local crops per image beside the 2 global ones (0: the other methods)
    local_size: int = 12  # their size (96 at 224 in DINO)
    # null: the source's statistics (Fashion-MNIST's own; ImageNet's for folders and shards)
    mean: list[float] | None = None
    std: list[float] | None = None  # with data.mean: 3 values each (RGB, of pixels in [0, 1])
    synthetic_train: int = 512  # images in the generated train split
    synthetic_test: int = 256  # images in the generated test split
    synthetic_classes: int = 10  # labels of the generated images
    # the stages of the views' pipeline that run on the training device instead of the data workers, each value
    # adding one to the value before it (in this order: `repre.data.pipeline.STAGE_ORDER`): workers, none;
    # photometric, the colour jitter, grayscale, blur, solarization and normalization (uint8 views and their
    # parameters cross); crops, the random resized crops and flips too (whole images cross, cut as batched matrix
    # products; the workers only read files and draw the parameters); decode, the JPEG decoding of folders and
    # shards too (their bytes cross; nvJPEG on a GPU). auto: photometric on a CUDA GPU, else workers
    device_stages: Literal["auto", "workers", "photometric", "crops", "decode"] = "auto"
    # data.name=shards: read through an index of member offsets (random), or each shard as one stream (stream:
    # URLs, pipe: commands, shards in an object store). auto: stream for http(s):// and pipe: roots
    shard_access: Literal["auto", "random", "stream"] = "auto"
    shuffle_block: int = 1000  # streamed shards: samples read, then given out in random order, per data worker
    stream_size: int = 0  # streamed shards: images in all shards, for train.epochs (0: unknown; set train.max_steps)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "subset": ">0", "image_size": ">0", "local_crops": ">=0", "local_size": ">0",
        "synthetic_train": ">0", "synthetic_test": ">0", "synthetic_classes": ">=1",
        "shuffle_block": ">=1", "stream_size": ">=0", "mean": "[0,1]",
        "std": ">0",
    }

    def __post_init__(self) -> None:
        # your own code's root may be no path (a table's name): made absolute where it names one that exists
        if self.name != "python" or (isinstance(self.root, str) and os.path.exists(os.path.expanduser(self.root))):
            self.root = _absolute(self.root)

    @property
    def streamed(self) -> bool:
        """Whether the images are tar shards read as streams (data.shard_access; auto: http(s):// and pipe: roots)."""
        return self.name == "shards" and (self.shard_access == "stream" or (
            self.shard_access == "auto" and str(self.root or "").startswith(REMOTE_ROOTS)))


@dataclass
class AugConfig(Section):
    """Two-view augmentation (MoCo v3 / BYOL recipe); per-view probabilities are [view 1, view 2], with DINO's
    local crops [view 1, view 2, local crops]."""

    # area range of the random resized crops, as fractions of the image
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])  # DINO's local crops
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # aspect-ratio range of the crops
    hflip: float = 0.5  # probability of a horizontal flip
    jitter_prob: float = 0.8  # probability of the colour jitter (brightness, contrast, saturation, hue below)
    # colour-jitter strengths as torchvision's ColorJitter takes them (their order: docs/data.md)
    brightness: float = 0.4
    contrast: float = 0.4  # colour-jitter strength
    saturation: float = 0.2  # colour-jitter strength
    hue: float = 0.1  # colour-jitter strength
    grayscale_prob: float = 0.2  # probability of converting a view to grayscale
    # Gaussian blur probability per view: [global 1, global 2], or [global 1, global 2, local] (data.local_crops
    # needs the third)
    blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1])
    # range of the blur's sigma, in pixels of the view, not scaled with its size (ImageNet's at 224 px; the
    # Fashion-MNIST presets set a smaller one)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # solarization probability per view, as blur_prob
    solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2])

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "crop_scale": "(0,1]", "local_crop_scale": "(0,1]", "crop_ratio": ">0", "hflip": "[0,1]",
        "jitter_prob": "[0,1]", "brightness": ">=0", "contrast": ">=0", "saturation": ">=0",
        "hue": "[0,0.5]", "grayscale_prob": "[0,1]", "blur_prob": "[0,1]", "blur_sigma": ">0",
        "solarize_prob": "[0,1]",
    }


@dataclass
class ModelConfig(Section):
    """The encoder: any timm ViT by name, or a small named configuration (see `repre.models.backbone`)."""

    # a timm ViT or Swin name, or a small named one (vit_pico_patch4, swin_pico_patch2_window4, ...)
    arch: str = "vit_pico_patch4"
    drop_path: float = 0.0  # stochastic depth of the online encoder (the momentum / teacher encoder has none)
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model keyword arguments
    # timm: timm's own initialization; mocov3: MoCo v3's ViT (its vits.py), a fixed 2-D sin-cos position embedding
    # and its initialization; dino: DINO's ViT (its vision_transformer.py), its class token initialization and its
    # resampling of the position embedding for the local crops. Both on the same timm model (ViTs with the class
    # token as their one prefix token; with local crops, timm's VisionTransformer), so that an export loads in
    # timm as any other
    init: Literal["timm", "mocov3", "dino"] = "timm"

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "drop_path": "[0,1)",
    }
    run_only: ClassVar[set[str]] = {"grad_checkpointing"}  # memory against time, the same values


@dataclass
class MoCoV3Config(Section):
    """MoCo v3 (Chen, Xie, He 2021): projector and predictor MLPs, InfoNCE against the momentum encoder's keys."""

    temperature: float = 0.2  # tau of the InfoNCE loss
    proj_dim: int = 256  # output width of the projector and the predictor
    mlp_dim: int = 4096  # hidden width of the projector and the predictor
    freeze_patch_embed: bool = False  # a frozen random patch projection (MoCo v3's stability trick for ViTs)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"temperature": ">0", "proj_dim": ">0", "mlp_dim": ">0"}


@dataclass
class DINOConfig(Section):
    """DINO (Caron et al. 2021): a student on all crops against an EMA teacher's centred, sharpened outputs."""

    student_temp: float = 0.1  # the student's softmax temperature
    out_dim: int = 65536  # K, the prototypes of the head (small in the CPU presets)
    hidden_dim: int = 2048  # hidden width of the head's MLP
    bottleneck_dim: int = 256  # the head's bottleneck before the prototypes
    norm_last_layer: bool = True  # weight-normalized last layer with its scale fixed to 1
    teacher_temp: float = 0.04  # the teacher's temperature after the warm-up (0.04 to 0.07 in the official recipes)
    warmup_teacher_temp: float = 0.04  # the teacher's temperature at the start of its linear warm-up
    warmup_teacher_temp_fraction: float = 0.1  # the warm-up, as a fraction of the run (official: 30 of 300 epochs)
    center_momentum: float = 0.9  # EMA momentum of the center subtracted from the teacher's outputs
    # the last layer's gradients dropped for this fraction of the run (official: 1 epoch)
    freeze_last_layer_fraction: float = 0.0

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "student_temp": ">0", "out_dim": ">0", "hidden_dim": ">0", "bottleneck_dim": ">0", "teacher_temp": ">0",
        "warmup_teacher_temp": ">0", "warmup_teacher_temp_fraction": "[0,1]", "center_momentum": "[0,1]",
        "freeze_last_layer_fraction": "[0,1]",
    }


@dataclass
class MoBYConfig(Section):
    """MoBY (Xie et al. 2021): MoCo v2/BYOL-style heads with batch norm, and a queue of keys per view."""

    temperature: float = 0.2  # tau of the contrastive loss
    proj_dim: int = 256  # output width of the projector and the predictor
    mlp_dim: int = 4096  # hidden width of the projector and the predictor
    queue_size: int = 4096  # keys per view's queue (a ring buffer; any batch size)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"temperature": ">0", "proj_dim": ">0", "mlp_dim": ">0", "queue_size": ">0"}


@dataclass
class MethodConfig(Section):
    """The framework. Each framework's own keys are in its section; the one that runs is `method.name`'s."""

    name: Literal["mocov3", "dino", "moby", "supervised"] = "mocov3"  # supervised: a labelled reference
    # the EMA momentum of the momentum / teacher encoder at the start; a cosine takes it to 1.0 by the end
    momentum: float = 0.99
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    dino: DINOConfig = field(default_factory=DINOConfig)
    moby: MoBYConfig = field(default_factory=MoBYConfig)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"momentum": "[0,1]"}


@dataclass
class ReconConfig(Section):
    """The RePre reconstruction branch: a convolutional decoder on the encoder's maps of several depths, an L1
    loss against the pixels of the view the encoder saw. The defaults are the choices every preset measured
    (docs/results.md, sections 4.1 and 4.2): per-patch normalized targets, x2 steps down to stride 4, then a
    pixel shuffle. The MoBY and MoCo v3 GPU presets also reconstruct one view, the MoBY and GPU presets resize
    by nearest interpolation."""

    enabled: bool = True  # the reconstruction branch; false: the plain framework (the baseline)
    weight: float = 1.0  # lambda in: total = contrastive + lambda * reconstruction
    # n evenly spaced blocks (a Swin: stages) ending with the last, or 0-based indices (negative: from the end)
    taps: int | list[int] = 4
    norm_pix: bool = True  # per-patch normalized targets (MAE's norm_pix_loss); false: the view's pixels
    width: int = 128  # decoder channels at the encoder's resolution; halved at each x2 upsampling step, not below 8
    # how the decoder resizes: its x2 steps, and a deeper tap to a shallower one's grid in its fusion (nearest:
    # cheaper on a GPU, docs/results.md)
    upsample: Literal["bilinear", "nearest"] = "bilinear"
    # the x2 steps stop at this stride (a power of two, at most the finest tapped map's); a 1x1 conv then
    # predicts out_stride x out_stride pixels per position (pixel shuffle). 1: convolutions up to full
    # resolution, where a GPU spends most of the decoder's time
    out_stride: int = 4
    # global views reconstructed per image: 2, both (the paper); 1, one (the first for even images in the batch,
    # the second for odd ones), at half the decoder's cost (the MoBY and the MoCo v3 GPU presets). The encoder
    # sees both either way
    views: Literal[1, 2] = 2

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"weight": ">=0", "width": ">0", "out_stride": ">=1"}


@dataclass
class TrainConfig(Section):
    """Optimisation and the run loop. All `*_every` and step counts are optimizer steps."""

    batch_size: int = 256  # global batch of images (each gives 2 global views, and DINO's data.local_crops)
    epochs: int = 1  # passes over the training images (when max_steps is 0)
    max_steps: int = 0  # > 0 wins over epochs; schedules span the actual total
    lr: float = 1.5e-4  # base lr for a batch of 256; the run uses lr * batch_size / 256
    min_lr: float = 0.0  # the lr at the end of the cosine (absolute: not scaled with the batch size)
    # AdamW's decoupled weight decay: MoCo v3 decays every parameter, DINO and MoBY all but biases and norms
    # (their official rules); a SwinV2's attention temperatures and position-bias MLPs never (its own rule)
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1  # linear lr warm-up, as a fraction of the run
    warmup_lr: float = 0.0  # the lr at the start of the warm-up (absolute, as min_lr; MoBY's recipe: 5e-7 per 512)
    # the lr's cosine: over the steps after the warm-up (MoCo v3's and DINO's schedules), or over the whole run
    # with the warm-up joining it where it stands (timm's CosineLRScheduler, as MoBY's official code runs it)
    cosine_span: Literal["after_warmup", "whole_run"] = "after_warmup"
    # max grad norm, over every trained parameter (the RePre decoder's included); 0 disables clipping (the
    # global norm is still logged)
    clip_grad: float = 0.0
    clip_mode: Literal["global", "per_param"] = "global"  # per_param: each tensor's norm clipped (DINO)
    weight_decay_end: float | None = None  # weight decay follows a cosine to this value (DINO: 0.04 -> 0.4)
    seed: int = 0  # seeds initialization, augmentation and data order
    log_every: int = 10  # a train line in metrics.jsonl and TensorBoard every this many steps
    checkpoint_every: int = 100  # a step checkpoint every this many steps
    keep_checkpoints: int = 3  # newest step checkpoints kept (besides last.pt and milestones)
    milestone_every: int = 0  # step checkpoints at multiples of this are never pruned; 0: none
    max_bad_steps: int = 20  # consecutive non-finite steps (skipped) before the run stops with status 3
    # step: the skip of a non-finite step is decided on the host (one synchronisation a step); log: on the
    # device, inside the fused AdamW step, with no synchronisation in the step (counts and the max_bad_steps
    # check at log and checkpoint steps). auto: log on a CUDA GPU
    host_sync: Literal["auto", "step", "log"] = "auto"
    eval_every: int = 0  # k-NN during training; 0: only at the end
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: CUDA, else MPS, else the CPU
    # auto: bf16 where the hardware runs it natively (fp16 on GPUs without bf16), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # data workers of each process; -1: min(8, its share of the cores - 1), the cores divided among torchrun's
    # processes on the node; more than 4 per core of its share are said, more than 64 per core refused; streamed shards
    # resume exactly only with as many
    num_workers: int = -1
    # torch.compile each transformer block and the decoder with its loss (weights keep their names)
    compile: bool = False
    # the same bits from the same run on the same machine, GPUs included (exact resume after a crash there too):
    # PyTorch's deterministic algorithms (can be slower); on a GPU with no local crops, and recon.upsample=nearest
    # where the decoder interpolates
    deterministic: bool = False
    progress: bool = True  # the progress bar on standard error
    diagnose_every: int = 100  # loss-balance diagnostics (RePre only): gradient norms and cosine; 0: off

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "batch_size": ">=2", "epochs": ">=0", "max_steps": "steps", "lr": ">=0", "min_lr": ">=0", "warmup_lr": ">=0",
        "weight_decay": ">=0", "warmup_fraction": "[0,1]", "clip_grad": ">=0",
        "weight_decay_end": ">=0", "seed": "seed", "log_every": ">0", "checkpoint_every": ">0",
        "keep_checkpoints": ">=1", "milestone_every": ">=0", "max_bad_steps": ">=1", "eval_every": ">=0",
        "num_workers": ">=-1", "diagnose_every": ">=0",
    }
    run_only: ClassVar[set[str]] = {
        "log_every", "checkpoint_every", "keep_checkpoints", "milestone_every", "max_bad_steps", "host_sync",
        "eval_every", "device", "num_workers", "progress", "diagnose_every",
    }
    # options kept for tests and measurements of the non-finite guard's two strategies: auto chooses well
    experimental: ClassVar[set[str]] = {"host_sync"}


@dataclass
class KNNConfig(Section):
    """Weighted k-NN on frozen features (DINO's protocol): the train split is the bank, the test split the queries."""

    enabled: bool = True  # a k-NN at the end of pre-training, in its summary (needs labels)
    k: int = 20  # neighbours that vote
    temperature: float = 0.07  # each neighbour votes with exp(similarity / T)
    train_subset: int | None = None  # bank size (N train images, as data.subset picks them); null: all
    test_subset: int | None = None  # queries (N test images, as data.subset picks them); null: all
    quick_train: int = 10000  # the bank of the k-NN during pre-training (train.eval_every)
    quick_test: int = 2000  # the queries of the k-NN during pre-training

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "k": ">0", "temperature": ">0", "train_subset": ">0", "test_subset": ">0", "quick_train": ">0",
        "quick_test": ">0",
    }
    run_only: ClassVar[set[str]] = {"enabled", "quick_train", "quick_test"}  # the k-NN during and after pre-training


@dataclass
class LinearConfig(Section):
    """The linear probe on frozen features, by one of four protocols (docs/evaluation.md): `quick`, repre's
    CPU protocol on precomputed features with lr and weight decay chosen on a held-out part of the train split
    (not a paper's protocol); `mocov3`, `dino` and `moby`, the papers' ImageNet protocols (SGD on augmented
    views through the frozen encoder, distributed under torchrun, resumed from the output folder). The keys
    left null take the protocol's own values."""

    # quick: the CPU protocol; mocov3, dino, moby: the papers'
    protocol: Literal["quick", "mocov3", "dino", "moby"] = "quick"
    # class token, mean patch token, or both, of each of the last `blocks` blocks (a Swin: the mean of each
    # stage); null: the protocol's (cls; dino on ViT-B and wider: both; without a class token: avg)
    features: Literal["cls", "avg", "both"] | None = None
    # concatenate the features of the last k blocks; null: the protocol's (1; dino below ViT-B's width: 4)
    blocks: int | None = None
    # quick: the probe's learning rates tried (the best on a held-out part of train is reported)
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    wds: list[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-3])  # quick: the weight decays tried, with each lr
    # mocov3, dino, moby: base lr per 256 images (x batch_size / 256); null: 3.0 / 0.001 / 0.5 (MoBY's 1.0 per 512)
    lr: float | None = None
    epochs: int | None = None  # epochs of the probe; null: the protocol's (quick 30, mocov3 90, dino 100, moby 100)
    # the probe's global batch, shared by the processes; null: the protocol's (moby 512, the others 1024)
    batch_size: int | None = None
    val_fraction: float = 0.1  # quick: of the train split, held out to choose lr and weight decay
    train_subset: int | None = None  # N train images for the probe (as data.subset picks them); null: all
    test_subset: int | None = None  # N test images scored (as data.subset picks them); null: all

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "blocks": ">=1", "lrs": ">0", "wds": ">=0", "lr": ">0", "epochs": ">0", "batch_size": ">0",
        "val_fraction": "(0,1)", "train_subset": ">0", "test_subset": ">0",
    }


@dataclass
class FinetuneConfig(Section):
    """End-to-end fine-tuning with layer-wise lr decay and label smoothing (short schedule for a CPU)."""

    steps: int = 200  # optimizer steps
    batch_size: int = 256  # images per step
    lr: float = 1e-3  # base lr per 256 images, scaled by batch_size / 256
    layer_decay: float = 0.75  # lr of block i: lr * decay^(depth - i); the head gets the full lr
    weight_decay: float = 0.05  # AdamW's weight decay
    label_smoothing: float = 0.1  # of the cross-entropy
    warmup_fraction: float = 0.1  # linear warm-up, as a fraction of the steps
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # area range of the random resized crops
    train_subset: int | None = None  # N train images (as data.subset picks them); null: all
    test_subset: int | None = None  # N test images scored (as data.subset picks them); null: all

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "steps": ">0", "batch_size": ">0", "lr": ">0", "layer_decay": "(0,1]", "weight_decay": ">=0",
        "label_smoothing": "[0,1)", "warmup_fraction": "[0,1]", "crop_scale": "(0,1]", "train_subset": ">0",
        "test_subset": ">0",
    }


@dataclass
class SegmentConfig(Section):
    """The dense probe: a 1x1 convolution on frozen patch features, scored by mIoU."""

    # generated scenes of Fashion-MNIST items, or a folder of images with PNG masks
    data: Literal["fashion-scenes", "folder"] = "fashion-scenes"
    # folder: ROOT/images/{train,val}/*.jpg with ROOT/masks/{train,val}/*.png; fashion-scenes: the Fashion-MNIST
    # files (null: data.root of a Fashion-MNIST run, else the default location)
    root: str | None = None
    size: int = 0  # probe resolution; 0: the scenes' 64 px canvas (fashion-scenes) or data.image_size (folder)
    classes: int = 0  # folder: number of classes; 0: 1 + the largest label in the probe-train and probe-test masks
    ignore: int = 255  # a mask value neither trained on, predicted nor scored (raw ADE20K masks: 0, unlabelled)
    train: int = 2000  # probe-train scenes (train-split items), or the first N folder pairs
    test: int = 1000  # probe-test scenes (test-split items), or the first N val pairs
    lr: float = 1e-2  # the probe's learning rate
    epochs: int = 10  # the probe's epochs

    def __post_init__(self) -> None:
        self.root = _absolute(self.root)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {
        "size": ">=0", "classes": ">=0", "ignore": ">=0", "train": ">0", "test": ">0", "lr": ">0", "epochs": ">0",
    }


@dataclass
class ReconEvalConfig(Section):
    """The reconstruction branch seen from outside: recon.png and `repre eval recon`."""

    images: int = 8  # images shown in recon.png (a row each, both views) and in `repre eval recon`
    subset: int | None = 1000  # held-out images for `repre eval recon`; null: the whole test split

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"images": ">0", "subset": ">0"}
    run_only: ClassVar[set[str]] = {"images"}  # a picture's rows


@dataclass
class EvalConfig(Section):
    """Evaluation: what every task shares, then each task's own section."""

    batch_size: int = 512  # images per batch of feature extraction
    split: Literal["test", "val"] = "test"  # val: report on a fixed random val_size of the train images
    val_size: int = 10000  # eval.split=val: the held-out train images
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    recon: ReconEvalConfig = field(default_factory=ReconEvalConfig)

    # the valid values of the fields above (`RULES`), checked by `validate`
    ranges: ClassVar[dict[str, str]] = {"batch_size": ">0", "val_size": ">0"}
    run_only: ClassVar[set[str]] = {"batch_size"}


def _sections(cls: type) -> tuple[str, ...]:
    """The names of a section's sub-sections (its dataclass fields), in their order."""
    return tuple(f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default_factory))


EVAL_TASKS = _sections(EvalConfig)  # `repre eval TASK`: every eval.TASK section
FRAMEWORKS = _sections(MethodConfig)  # the method.name values with a section of their own
MULTI_CROP = ("dino",)  # the frameworks that take local crops (data.local_crops): `Method.multi_crop`


@dataclass
class Config(Section):
    """A whole run."""

    # the preset or YAML file the config came from; "defaults": these classes' defaults, which are no preset's
    preset: str = "defaults"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    run_only: ClassVar[set[str]] = {"preset", "description"}  # labels: what a run computes is the rest

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def measures_loss_balance(self) -> bool:
        """Whether a run measures the gradient each loss sends into the encoder (the RePre branch's loss-balance
        diagnostics, every train.diagnose_every steps: the trainer's `LossBalance`, the runtime's settings)."""
        return self.recon.enabled and self.train.diagnose_every > 0


def _run_only(cls: type, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys of `cls` and its sub-sections that its sections name in `run_only`."""
    own = tuple(prefix + f.name for f in dataclasses.fields(cls) if f.name in getattr(cls, "run_only", ()))
    sections = [f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default_factory)]
    # (a sub-section's default factory is its class)
    return own + sum((_run_only(cast(type, f.default_factory), f"{prefix}{f.name}.") for f in sections), ())


# The keys that change how a run or an evaluation goes (where and how fast it runs, what it logs, draws and
# keeps, when it gives up), never the weights it trains nor the results it reports at its end: the same run
# with another value of them computes the same numbers (up to the rounding of another device). A resumed run
# may change them (`engine.checkpoints`), an evaluation that sets them still measures the run's own encoder
# (`engine.metrics.add_evaluation`) and two runs that differ only in them have comparable results
# (`use.compare`). One exception: streamed shards give their images in an order that follows
# train.num_workers (a resume with another count warns).
RUN_ONLY_KEYS = _run_only(Config)


NO_EMA_METHODS = ("supervised",)  # method.name values without a momentum or teacher encoder (empty `ema_pairs()`)


def idle_sections(method: str, recon_enabled: bool = True) -> tuple[str, ...]:
    """The keys a run of `method` does not read, as key prefixes: the sections of the frameworks that do not
    run (method.NAME.), method.momentum for a method without an EMA, and without the branch its keys but
    recon.enabled."""
    branch = () if recon_enabled else tuple(f"recon.{f.name}" for f in dataclasses.fields(ReconConfig)
                                            if f.name != "enabled")
    return (tuple(f"method.{name}." for name in FRAMEWORKS if name != method)
            + (("method.momentum",) if method in NO_EMA_METHODS else ()) + branch)  # whole keys: none starts so
