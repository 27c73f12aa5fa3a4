"""The ImageNet presets resolve to the official recipes' values: the commands and defaults of
facebookresearch/moco-v3 (c349e6e), facebookresearch/dino (7c446df) and SwinTransformer/Transformer-SSL
(4510de1), cited per value. lr and min lr are per 256 images where the official code scales by batch / 256,
and converted where it scales by batch / 512 (MoBY)."""

from __future__ import annotations

import pytest

from repre.config import flatten, list_presets, load_config

OFFICIAL = {
    "in1k-vit-s16-mocov3-repre": {  # CONFIG.md:105-117 (ViT-Small, 1 node, batch 1024); main_moco.py defaults
        "method.name": "mocov3",
        "train.batch_size": 1024,  # -b 1024
        "train.lr": 1.5e-4,  # --lr=1.5e-4, per 256 (main_moco.py:190)
        "train.weight_decay": 0.1,  # --weight-decay=.1
        "train.epochs": 300,  # --epochs=300
        "train.warmup_fraction": pytest.approx(40 / 300, abs=1e-6),  # --warmup-epochs=40
        "train.clip_grad": 0.0,  # no clipping in main_moco.py
        "method.momentum": 0.99,  # --moco-m default (main_moco.py:99), with --moco-m-cos
        "method.mocov3.temperature": 0.2,  # --moco-t=.2
        "method.mocov3.proj_dim": 256,  # --moco-dim default (95)
        "method.mocov3.mlp_dim": 4096,  # --moco-mlp-dim default (97)
        "method.mocov3.freeze_patch_embed": True,  # --stop-grad-conv1
        "aug.crop_scale": [0.08, 1.0],  # --crop-min default (117)
        "data.image_size": 224,
        "data.local_crops": 0,
        "model.arch": "vit_small_patch16_224",  # vits.py:115-119: patch 16, 384-d, depth 12 ...
        "model.kwargs": {"num_heads": 12},  # ... 12 heads
        "model.init": "mocov3",  # fixed sin-cos position embedding (vits.py:29,53-69), its init (31-47)
    },
    "in1k-vit-b16-mocov3-repre": {  # CONFIG.md:153-165 (ViT-Base, 8 nodes); main_moco.py defaults
        "method.name": "mocov3",
        "train.batch_size": 4096,  # -b default (main_moco.py:60)
        "train.lr": 1.5e-4,
        "train.weight_decay": 0.1,
        "train.epochs": 300,
        "train.warmup_fraction": pytest.approx(40 / 300, abs=1e-6),
        "train.clip_grad": 0.0,
        "method.momentum": 0.99,
        "method.mocov3.temperature": 0.2,
        "method.mocov3.proj_dim": 256,
        "method.mocov3.mlp_dim": 4096,
        "method.mocov3.freeze_patch_embed": True,
        "aug.crop_scale": [0.08, 1.0],
        "model.arch": "vit_base_patch16_224",  # vits.py:122-126: 768-d, depth 12, 12 heads (timm's own)
        "model.init": "mocov3",
    },
    "in1k-vit-s16-dino-repre": {  # README.md:196-197 (full command) through run_with_submitit.py; main_dino.py
        "method.name": "dino",
        "train.batch_size": 1024,  # 2 nodes x 8 GPUs (run_with_submitit.py:29-30) x 64 (main_dino.py:90)
        "train.lr": 5e-4,  # main_dino.py:96, per 256 (239)
        "train.min_lr": 1e-6,  # 101
        "train.epochs": 300,  # --epochs 300
        "train.warmup_fraction": pytest.approx(10 / 300, abs=1e-6),  # --warmup_epochs 10 (99)
        "train.weight_decay": 0.04,  # 82
        "train.weight_decay_end": 0.4,  # 84
        "train.clip_grad": 3.0,  # 87
        "train.clip_mode": "per_param",  # utils.clip_gradients: each parameter's norm
        "method.momentum": 0.996,  # 61
        "method.dino.out_dim": 65536,  # 55
        "method.dino.norm_last_layer": False,  # --norm_last_layer false
        "method.dino.student_temp": 0.1,  # DINOLoss (365)
        "method.dino.teacher_temp": 0.07,  # --teacher_temp 0.07
        "method.dino.warmup_teacher_temp": 0.04,  # 68
        # --warmup_teacher_temp_epochs 30
        "method.dino.warmup_teacher_temp_fraction": pytest.approx(30 / 300, abs=1e-6),
        "method.dino.freeze_last_layer_fraction": pytest.approx(1 / 300, abs=1e-6),  # --freeze_last_layer 1 (93)
        "model.drop_path": 0.1,  # --drop_path_rate (105)
        "aug.crop_scale": [0.4, 1.0],  # --global_crops_scale (108)
        "aug.local_crop_scale": [0.05, 0.4],  # --local_crops_scale (115)
        "data.local_crops": 8,  # --local_crops_number (112)
        "data.local_size": 96,  # RandomResizedCrop(96, ...) (452)
        "data.image_size": 224,
        "model.init": "dino",  # the class token's init, the local crops' position embedding (vision_transformer.py)
    },
    "in1k-swin-t-moby-repre": {  # get_started.md:154-155 (8 GPUs x 64), configs/moby_swin_tiny.yaml, config.py
        "method.name": "moby",
        "train.batch_size": 512,  # 8 x --batch-size 64
        "train.lr": 5e-4,  # BASE_LR 0.001 per 512 (moby_swin_tiny.yaml, moby_main.py:210) = 5e-4 per 256
        "train.min_lr": 5e-6,  # MIN_LR 5e-6 per 512 (config.py:98, moby_main.py:212), at batch 512
        "train.warmup_lr": 5e-7,  # WARMUP_LR 5e-7 per 512 (config.py:97, moby_main.py:211), at batch 512
        "train.epochs": 300,  # EPOCHS 300
        "train.warmup_fraction": pytest.approx(5 / 300, abs=1e-6),  # WARMUP_EPOCHS 5
        "train.weight_decay": 0.05,  # WEIGHT_DECAY 0.05
        "train.clip_grad": 5.0,  # CLIP_GRAD (config.py:100), a global norm (moby_main.py:152-153)
        "train.clip_mode": "global",
        "method.momentum": 0.99,  # CONTRAST_MOMENTUM
        "method.moby.temperature": 0.2,  # CONTRAST_TEMPERATURE
        "method.moby.queue_size": 4096,  # CONTRAST_NUM_NEGATIVE
        "method.moby.proj_dim": 256,  # MoBYMLP out_dim (models/moby.py:171)
        "method.moby.mlp_dim": 4096,  # MoBYMLP inner_dim
        "model.drop_path": 0.2,  # ONLINE_DROP_PATH_RATE (the target's is 0 in repre.methods.base)
        "model.arch": "swin_tiny_patch4_window7_224",
        "data.image_size": 224,
    },
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_imagenet_presets_resolve_to_the_official_recipe(preset):
    resolved = flatten(load_config(preset).to_dict())
    wrong = {key: (resolved[key], want) for key, want in OFFICIAL[preset].items() if resolved[key] != want}
    assert not wrong, f"{preset}: (resolved, official) {wrong}"


IMAGENET_TRAIN = 1_281_167  # ImageNet-1k's training images
# the parts of a run the official scripts give in epochs, each as the fraction of the run a preset sets
IN_EPOCHS = {
    "in1k-vit-s16-mocov3-repre": {"train.warmup_fraction": 40},
    "in1k-vit-b16-mocov3-repre": {"train.warmup_fraction": 40},
    "in1k-vit-s16-dino-repre": {"train.warmup_fraction": 10, "method.dino.warmup_teacher_temp_fraction": 30,
                                "method.dino.freeze_last_layer_fraction": 1},
    "in1k-swin-t-moby-repre": {"train.warmup_fraction": 5},
}


@pytest.mark.parametrize("preset", sorted(IN_EPOCHS))
def test_fractions_of_the_run_come_to_the_official_steps(preset):
    """On ImageNet-1k (full batches, as every official loader drops the last), each fraction rounds to the steps
    of the official epochs: MoCo v3's 40 warm-up epochs are 50,040 steps at batch 1024."""
    resolved = flatten(load_config(preset).to_dict())
    per_epoch = IMAGENET_TRAIN // resolved["train.batch_size"]
    total = resolved["train.epochs"] * per_epoch
    steps = {key: round(resolved[key] * total) for key in IN_EPOCHS[preset]}
    assert steps == {key: epochs * per_epoch for key, epochs in IN_EPOCHS[preset].items()}


# What each preset's branch computes, as its quality gates chose (docs/results.md, sections 4.1 and 4.2): views
# reconstructed per image, output stride, taps, upsampling and per-patch normalized targets. Presets inherit
# these through `_base_`, so a change to a base preset shows here for each preset it reaches.
BRANCH = {
    "fmnist-mocov3-repre": (2, 4, 4, "bilinear", True),
    "fmnist-dino-repre": (2, 4, 4, "bilinear", True),  # one view lowered DINO's k-NN on every validation seed
    "fmnist-moby-repre": (1, 4, 2, "nearest", True),  # the 4x4 shuffle: every task higher on average on 3 test seeds
    "in1k-vit-s16-mocov3-repre": (1, 4, 4, "nearest", True),
    "in1k-vit-b16-mocov3-repre": (1, 4, 4, "nearest", True),
    "in1k-vit-s16-dino-repre": (2, 4, 4, "nearest", True),
    "in1k-swin-t-moby-repre": (1, 4, 3, "nearest", True),
}


def test_every_repre_preset_names_its_branch_here():
    """A new preset with the branch states the branch its quality gate chose in BRANCH (else none checks it)."""
    assert set(BRANCH) == {name for name in list_presets() if load_config(name).recon.enabled}


@pytest.mark.parametrize("preset", sorted(BRANCH))
def test_presets_reconstruct_what_their_quality_gates_chose(preset):
    r = flatten(load_config(preset).to_dict())
    keys = ("recon.views", "recon.out_stride", "recon.taps", "recon.upsample", "recon.norm_pix")
    assert tuple(r[key] for key in keys) == BRANCH[preset]


def test_each_preset_takes_the_encoder_initialization_measured_for_it():
    """The MoCo v3 presets take MoCo v3's ViT recipe (results.md, section 3.1); the CPU DINO presets its
    initialization with the projection trained (sections 3.1, 4.5), as DINO trains it (a switch back to
    method.name=mocov3 on them leaves it trained too); the GPU DINO preset DINO's own ViT; a Swin timm's."""
    expected = {"mocov3": ("mocov3", True), "fmnist-dino": ("mocov3", False), "in1k-vit-s16-dino": ("dino", False),
                "moby": ("timm", False)}
    for name in list_presets():
        cfg = load_config(name)
        kind = next(k for k in expected if name.startswith(k) or k == cfg.method.name)
        assert (cfg.model.init, cfg.method.mocov3.freeze_patch_embed) == expected[kind], name
