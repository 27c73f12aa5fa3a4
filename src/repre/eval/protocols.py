"""The linear-probe protocols and their values, resolved from `eval.linear` and the encoder.

- `quick`: repre's quick CPU protocol, not a paper's: AdamW on precomputed features, lr x weight decay chosen
  on a held-out part of train (`repre.eval.linear`).
- `mocov3`: facebookresearch/moco-v3 (c349e6e) main_lincls.py with the ViT command of CONFIG.md.
- `dino`: facebookresearch/dino (7c446df) eval_linear.py with its README's command.
- `moby`: SwinTransformer/Transformer-SSL (4510de1) moby_linear.py with get_started.md's command.

The papers' protocols train a linear head with SGD (momentum 0.9, no weight decay) at lr = base_lr x batch /
256 and a cosine, on random resized crops and flips through the frozen encoder (`repre.eval.lincls`). MoCo v3
and DINO: the head's weights ~ N(0, 0.01), the cosine stepped once an epoch, the encoder in eval mode. MoBY:
Nesterov momentum, 5 warm-up epochs and a cosine stepped every step (timm's CosineLRScheduler), label smoothing
0.1, the head's gradient clipped at norm 5, weights ~ N(0, 0.02), and the encoder in train mode with stochastic
depth 0.2. Each value below cites the official line it comes from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from repre.config import LinearConfig
from repre.core.schedules import scaled_lr
from repre.data.evaluation import EvalResize
from repre.errors import UserError
from repre.eval.tokens import blocks_hold_prefix, check_layout
from repre.models.backbone import Backbone

REFERENCES = {
    "quick": "repre's quick CPU protocol (not a paper's): AdamW on precomputed features, lr x weight decay "
             "chosen on a held-out part of train",
    "mocov3": "MoCo v3's linear classification: facebookresearch/moco-v3 main_lincls.py, --lr=3 (CONFIG.md)",
    "dino": "DINO's linear evaluation: facebookresearch/dino eval_linear.py",
    "moby": "MoBY's linear evaluation: SwinTransformer/Transformer-SSL moby_linear.py",
}
# the values a protocol fixes when `eval.linear` leaves them null
DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {"epochs": 30, "batch_size": 1024, "base_lr": None},
    "mocov3": {
        "epochs": 90,  # main_lincls.py:49 (--epochs default)
        "batch_size": 1024,  # main_lincls.py:53 (-b default, the total over all GPUs); moco-v3 README.md:148
        "base_lr": 3.0,  # CONFIG.md:144 (ViT-Small) and :174 (ViT-Base) pass --lr=3; main_lincls.py:58's
        # default 0.1 is ResNet-50's
    },
    "dino": {
        "epochs": 100,  # eval_linear.py:265 (--epochs default)
        "batch_size": 1024,  # eval_linear.py:270 (128 per GPU) x dino README.md:263 (--nproc_per_node=8)
        "base_lr": 0.001,  # eval_linear.py:266 (--lr default, "for a reference batch size of 256")
    },
    "moby": {
        "epochs": 100,  # moby_linear.py:92
        "batch_size": 512,  # get_started.md:181-182: 8 GPUs x --batch-size 64
        "base_lr": 0.5,  # moby_linear.py:71 (--lr default 1.0) per 512 images (359)
    },
}
# what the MoBY protocol does beyond the others' SGD (`LinearProtocol`'s fields; per 256 images where scaled)
MOBY: dict[str, Any] = {
    "nesterov": True,  # optimizer.py:26
    "warmup_epochs": 5,  # moby_linear.py:93
    "warmup_lr": 2.5e-7,  # config.py:97 (WARMUP_LR 5e-7) per 512 (moby_linear.py:360)
    "min_lr": 2.5e-6,  # config.py:98 (MIN_LR 5e-6) per 512 (moby_linear.py:361)
    "lr_per_step": True,  # lr_scheduler.py:20-29 (t_in_epochs=False), stepped at every step (moby_linear.py:245)
    "label_smoothing": 0.1,  # config.py:59, moby_linear.py:140
    "clip_grad": 5.0,  # config.py:100, moby_linear.py:241
    "drop_path": 0.2,  # moby_linear.py:72 (--drop-path-rate); the frozen encoder runs in train mode (189)
    "init_std": 0.02,  # the Swin head's trunc_normal_(std=.02) (models/swin_transformer.py:553), bias 0 (555)
}
# how each paper's script resizes a test image before its centre 224 x 224: every image's short side to 256
# (floor(S / 0.875) at another size S; MoBY's S + 32 is the same 256 at 224), DINO's bicubic, the others' bilinear
TEST_RESIZE = {
    "quick": EvalResize(),  # repre's evaluation rule (`repre.data.evaluation.centre_view`)
    "mocov3": EvalResize(every_image=True),  # main_lincls.py:290-291 (transforms.Resize(256), bilinear)
    "dino": EvalResize("bicubic", every_image=True),  # eval_linear.py:66-67 (Resize(256, interpolation=3))
    "moby": EvalResize(every_image=True),  # data/build.py:137-138 (Resize(IMG_SIZE + 32), bilinear)
}
MOMENTUM = 0.9  # main_lincls.py:60 (--momentum default); eval_linear.py:106
WEIGHT_DECAY = 0.0  # main_lincls.py:62 (--wd default); eval_linear.py:107
INIT_STD = 0.01  # the head's weights ~ N(0, 0.01), bias 0: main_lincls.py:168-169; eval_linear.py:243-244
DINO_WIDE = 768  # ViT-B's width: DINO evaluates ViT-B with 1 block + avgpool, narrower ViTs with 4 blocks


@dataclass(frozen=True)
class LinearProtocol:
    """One linear probe's resolved values."""

    name: str  # quick | mocov3 | dino | moby
    features: str  # cls | avg | both (`repre.eval.tokens`)
    blocks: int
    epochs: int
    batch_size: int  # global, over all processes
    base_lr: float | None  # per 256 images; None: quick (it sweeps eval.linear.lrs)
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    init_std: float = INIT_STD
    nesterov: bool = False
    warmup_epochs: int = 0  # the lr rises linearly from warmup_lr over these
    warmup_lr: float = 0.0  # per 256 images
    min_lr: float = 0.0  # per 256 images: where the cosine ends
    lr_per_step: bool = False  # the cosine (and warm-up) stepped every step, over all steps; else once an epoch
    label_smoothing: float = 0.0
    clip_grad: float = 0.0  # the head's gradient norm clipped to this; 0: not clipped
    drop_path: float | None = None  # the encoder runs in train mode with this stochastic depth; None: eval mode
    test_resize: EvalResize = EvalResize()  # how a test image is resized before its centre crop

    @property
    def lr(self) -> float:
        """The peak lr: base_lr x batch / 256 (main_lincls.py:196; eval_linear.py:105; moby_linear.py:359)."""
        assert self.base_lr is not None, "the quick protocol has no lr: it sweeps eval.linear.lrs"
        return scaled_lr(self.base_lr, self.batch_size)

    def summary(self) -> dict[str, Any]:
        """What the result's `extra` says of the protocol."""
        out = {**asdict(self), "protocol": self.name, "reference": REFERENCES[self.name]}
        del out["name"]
        if self.base_lr is None:  # quick: AdamW, its lr and weight decay from the sweep
            out = {k: v for k, v in out.items() if k in ("features", "blocks", "epochs", "batch_size", "protocol",
                                                         "reference")}
        return out


def default_layout(name: str, encoder: Backbone) -> tuple[str, int]:
    """The features and blocks a protocol reads when eval.linear leaves them null."""
    if encoder.pools_patch_tokens:  # a Swin: the mean of the last stage, as both papers' ResNet-50 (avgpool)
        return "avg", 1  # and MoBY's Swin (models/swin_transformer.py:577-579, after the final norm); a ViT
    # pooling the patch tokens' mean (global_pool='avg'): its own embedding, not a class token it never pooled
    if not encoder.hierarchical and not blocks_hold_prefix(encoder):  # CaiT: no block holds the class token
        return "avg", 1
    if name == "dino" and encoder.embed_dim < DINO_WIDE:
        # eval_linear.py:256,258: --n_last_blocks 4, --avgpool_patchtokens false, "for ViT-Small"
        return "cls", min(4, encoder.num_units)
    if name == "dino":  # dino README.md:340,344: ViT-B with --n_last_blocks 1 --avgpool_patchtokens true
        return "both", 1
    return "cls", 1  # quick; mocov3: the class token after the final norm, the head input of timm 0.4.9's ViT
    # (moco-v3 README.md:90), which vits.py:25 extends


def resolve(lin: LinearConfig, encoder: Backbone) -> LinearProtocol:
    """`eval.linear` -> the protocol's values, each null key taking the protocol's own; UserError for a
    combination the protocol does not allow."""
    features, blocks = default_layout(lin.protocol, encoder)
    if lin.protocol in ("mocov3", "moby") and (lin.features or features, lin.blocks or blocks) != (features, blocks):
        other = [f"eval.linear.{key}={value}" for key, value, own in (("features", lin.features, features),
                                                                      ("blocks", lin.blocks, blocks))
                 if value and value != own]
        raise UserError(f"eval.linear.protocol={lin.protocol} reads features={features} of blocks={blocks} (the "
                        f"paper's head input); {', '.join(other)} appl{'ies' if len(other) == 1 else 'y'} to the "
                        "quick and dino protocols: leave them null (--set eval.linear.features=null --set "
                        "eval.linear.blocks=null)")
    features, blocks = lin.features or features, lin.blocks or blocks
    check_layout(encoder, features, blocks)
    own = DEFAULTS[lin.protocol]
    return LinearProtocol(name=lin.protocol, features=features, blocks=blocks, epochs=lin.epochs or own["epochs"],
                    batch_size=lin.batch_size or own["batch_size"],
                    base_lr=lin.lr if lin.lr is not None else own["base_lr"], test_resize=TEST_RESIZE[lin.protocol],
                    **(MOBY if lin.protocol == "moby" else {}))
