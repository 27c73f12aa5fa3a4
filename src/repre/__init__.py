"""repre: Reconstructive Pre-training (RePre; Wang et al., IJCAI 2022) of vision transformers.

The Python API behind the `repre` command:

    cfg = repre.load_config("fmnist-mocov3-repre", ["train.max_steps=20"])
    model = repre.build_model(cfg)              # RePre(MoCoV3(...)) or Plain(...)
    summary = repre.pretrain(cfg, "runs/demo")  # writes checkpoints, metrics, recon.png, summary.json
    result = repre.evaluate("knn", "runs/demo") # {"task": "knn", "metric": "top1", "value": ...}
    card = repre.export("runs/demo", "vit.safetensors")  # timm weights + model card, self-checked
"""

__version__ = "0.1.0"

from repre.builder import build_encoder, build_model  # noqa: E402
from repre.config import Config, load_config  # noqa: E402
from repre.engine.trainer import pretrain  # noqa: E402
from repre.eval import evaluate, load_encoder  # noqa: E402
from repre.export import export  # noqa: E402

__all__ = ["Config", "__version__", "build_encoder", "build_model", "evaluate", "export", "load_config", "load_encoder", "pretrain"]
