"""repre: Reconstructive Pre-training (RePre; Wang et al., IJCAI 2022) of vision transformers.

The Python API behind the `repre` command:

    cfg = repre.load_config("fmnist-mocov3-repre", ["train.max_steps=20"])
    model = repre.build_model(cfg)              # RePre(MoCoV3(...)) or Baseline(...)
    summary = repre.pretrain(cfg, "runs/demo")  # writes checkpoints, metrics, recon.png, summary.json
    result = repre.evaluate("knn", "runs/demo") # {"task": "knn", "metric": "top1", "value": ...}
    card = repre.export("runs/demo", "vit.safetensors")  # timm weights + model card, self-checked
    branch = repre.ReconstructionBranch(vit, taps=4)   # the branch in your own loop (repre.branch)
    repre.embed("runs/demo", "emb.npy")         # an L2-normalized embedding per image, with its index
    repre.neighbors("runs/demo", "emb.npy", "nn.png")  # queries and their nearest images

The names load on first use (PEP 562), so `import repre.cli` and `repre --help` load no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from repre._version import __version__

_API = {  # name -> the module that defines it
    "Config": "repre.config",
    "load_config": "repre.config",
    "build_encoder": "repre.builder",
    "build_model": "repre.builder",
    "pretrain": "repre.pretraining",
    "evaluate": "repre.eval",
    "load_encoder": "repre.pretrained",
    "export": "repre.exporting",
    "ReconstructionBranch": "repre.branch",
    "embed": "repre.use.embed",
    "neighbors": "repre.use.neighbors",
}

if TYPE_CHECKING:
    from repre.branch import ReconstructionBranch
    from repre.builder import build_encoder, build_model
    from repre.config import Config, load_config
    from repre.eval import evaluate
    from repre.exporting import export
    from repre.pretrained import load_encoder
    from repre.pretraining import pretrain
    from repre.use.embed import embed
    from repre.use.neighbors import neighbors


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'repre' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*__all__, "__doc__", "__file__", "__name__", "__path__"])


__all__ = ["Config", "ReconstructionBranch", "__version__", "build_encoder", "build_model", "embed", "evaluate",
           "export", "load_config", "load_encoder", "neighbors", "pretrain"]
