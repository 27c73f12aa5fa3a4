import torch
from repre.config import load_config
from repre.builder import build_encoder
from repre.engine.runtime import setup_runtime
from repre.eval.segment import feature_maps
cfg = load_config("fmnist-moby-repre", ["train.device=cuda" if torch.cuda.is_available() else "train.device=cpu"])
rt = setup_runtime(cfg.train)
enc = build_encoder(cfg).to(rt.device)
maps = feature_maps(enc, torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8), (0.5,)*3, (0.5,)*3, rt, 2)
print("segment swin 64px on", rt.device, tuple(maps.shape))
