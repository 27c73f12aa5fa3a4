"""CUDA correctness: the same model and batch give the same losses and gradients on CUDA as on CPU (fp32, TF32
off); bf16 autocast stays close to fp32; a checkpoint trained on CUDA loads on CPU and gives the same features.

    PYTHONPATH=src python benchmarks/cuda_check.py [--presets fmnist-mocov3-repre,fmnist-dino-repre,...]

Prints one line per check and a JSON line last ({"benchmark": "cuda_check", "passed": bool, "checks": {...}}).
Exits 1 when a check fails, 2 when no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from repre.builder import build_model
from repre.config import load_config
from repre.data.pipeline import pretrain_loader
from repre.data.splits import train_source
from repre.pretrained import load_encoder
from repre.pretraining import pretrain

BASE = ["data.name=synthetic", "train.num_workers=0", "train.progress=false", "eval.knn.enabled=false",
        "train.diagnose_every=0", "train.batch_size=64"]


def losses_and_grads(model: torch.nn.Module, batch: dict, dtype: torch.dtype | None) -> dict[str, float]:
    """One forward/backward (global views [B, 2, 3, H, W], DINO's local crops when present) -> losses and the
    encoder's gradient norm."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    local = batch.get("local_views")
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(batch["views"].float().to(device), 0.99, None, None if local is None else local.float().to(device))
    out["loss"].backward()
    grads = [p.grad.float().norm() for p in model.encoder.parameters() if p.grad is not None]
    return {"loss_contrastive": out["loss_contrastive"].item(), "loss_recon": out["loss_recon"].item(),
            "encoder_grad_norm": float(torch.stack(grads).norm())}


def close(a: dict[str, float], b: dict[str, float], rtol: float) -> tuple[bool, float]:
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-8) for k in a)
    return worst <= rtol, worst


def check_preset(preset: str, dev: str) -> dict[str, dict]:
    """The four checks for one preset (its method, backbone and RePre branch)."""
    checks: dict[str, dict] = {}
    cfg = load_config(preset, BASE + ["train.device=cpu"])
    torch.manual_seed(0)
    source = train_source(cfg)
    batch = next(iter(pretrain_loader(cfg, source, 0, False)))
    init = build_model(cfg, source.num_classes)  # a forward changes state (queues, center, EMA): fresh copies
    ref = losses_and_grads(copy.deepcopy(init), batch, None)
    got = losses_and_grads(copy.deepcopy(init).to(dev), batch, None)
    ok, worst = close(got, ref, 1e-3)
    checks["fp32_cuda_vs_cpu"] = {"ok": ok, "max_rel_diff": worst, "cpu": ref, "cuda": got}
    bf16 = losses_and_grads(copy.deepcopy(init).to(dev), batch, torch.bfloat16)
    ok, worst = close(bf16, got, 0.05)
    checks["bf16_vs_fp32_cuda"] = {"ok": ok, "max_rel_diff": worst, "bf16": bf16}

    out = Path(tempfile.mkdtemp()) / "run"
    summary = pretrain(load_config(preset, BASE + [f"train.device={dev}", "train.max_steps=6",
                                                   "train.checkpoint_every=3"]), out)
    checks["train_bf16_cuda"] = {"ok": bool(summary["completed"]) and summary["loss"] == summary["loss"],
                                 "loss": summary["loss"], "precision": summary.get("precision")}
    enc_cpu, _ = load_encoder(out)  # on the CPU: checkpoints load there
    enc_gpu = copy.deepcopy(enc_cpu).to(dev)
    x = batch["views"][:, 0].float()
    with torch.no_grad():
        a, _ = enc_cpu.eval()(x)
        b, _ = enc_gpu.eval()(x.to(dev))
    diff = float((a - b.cpu()).abs().max() / a.abs().max())
    # the checkpoint written by the CUDA run loads on CPU; its features agree across devices
    checks["checkpoint_cuda_to_cpu_features"] = {"ok": diff < 1e-3, "max_rel_diff": diff}
    checks["show_and_embed_on_cuda"] = use_on(out, dev)
    return checks


def use_on(run: Path, dev: str) -> dict:
    """`repre show` and `repre embed` of a run on the device (their models there, their pictures and rows on
    the host)."""
    from repre.use.embed import embed
    from repre.use.show import show

    try:
        on = [f"train.device={dev}"]
        drawn = show(run, run / "show.png", images=2, overrides=on)
        rows = embed(run, run / "emb.npy", overrides=[*on, "data.synthetic_train=64"])
        return {"ok": drawn["images"] == 2 and rows["images"] == 64}
    except Exception as exc:  # reported as a failed check, the other checks still run
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def check_views(dev: str) -> dict[str, dict]:
    """The device placement of the views (data.device_stages: photometric, crops, decode) on CUDA against
    the CPU: crops within one grey level (TF32 products), nvJPEG against libjpeg-turbo (`_compare_decoders`), the
    photometric stage to float rounding."""
    import numpy as np
    from PIL import Image

    from repre.config import AugConfig
    from repre.data.device_views import crop_sets
    from repre.data.views import ViewSpec, photometric, sample_views

    g = torch.Generator().manual_seed(0)
    shapes = [(375, 500), (500, 333), (224, 224), (640, 480), (90, 120)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]
    spec = ViewSpec(AugConfig(), 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    params = [sample_views(spec, 0, 0, i, h, w) for i, (h, w) in enumerate(shapes)]
    boxes, flips = torch.stack([p[0] for p in params]), torch.stack([p[1] for p in params])
    photo = torch.stack([p[2] for p in params]).flatten(0, 1)
    cpu = crop_sets(images, [(boxes, flips, 224)])[0]
    cuda = crop_sets([x.to(dev) for x in images], [(boxes, flips, 224)])[0].cpu()
    crop_diff = int((cpu.int() - cuda.int()).abs().max())
    out = {"crops_cuda_vs_cpu": {"ok": crop_diff <= 1, "max_rel_diff": crop_diff, "unit": "grey levels"}}
    a = photometric(cpu.flatten(0, 1), photo, spec)
    b = photometric(cpu.flatten(0, 1).to(dev), photo.to(dev), spec).cpu()
    diff = float((a - b).abs().max())
    out["photometric_cuda_vs_cpu"] = {"ok": diff < 1e-3, "max_rel_diff": diff}
    rng = np.random.default_rng(0)
    fields = [Image.fromarray(rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)).resize((w, h))
              for h, w in shapes]
    for name, subsampling in (("444", 0), ("420", 2)):
        out[f"jpeg_decode_cuda_vs_cpu_{name}"] = _compare_decoders(fields, subsampling, dev)
    return out


def _compare_decoders(images: list, subsampling: int, dev: str) -> dict:
    """nvJPEG (`decode_jpegs` on `dev`) against the CPU decoder on the same JPEG bytes, in grey levels: RGB and
    luma (0.299 R + 0.587 G + 0.114 B). With 4:4:4 chroma only the inverse DCTs and colour conversions differ: the
    RGB mean must stay under 1 level. With 4:2:0 chroma the decoders may also upsample the chroma planes
    differently (libjpeg-turbo interpolates, "fancy upsampling"), which moves colours at colour edges but not
    luma: there the luma mean must stay under 1 level and the RGB mean under 5 (a swapped or shifted chroma plane
    gives tens). `chroma_gap` is what replicating the half-resolution chroma instead of interpolating it would
    cost on these images (`chroma_upsampling_gap`): the size of the RGB difference that this cause explains."""
    import io

    from repre.data.device_views import decode_jpegs
    from repre.data.folder import decode

    blobs = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90, subsampling=subsampling)
        blobs.append(buf.getvalue())
    ref = [decode(io.BytesIO(d)).float() for d in blobs]
    got = [x.cpu().float() for x in decode_jpegs([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in blobs],
                                                 torch.device(dev))]
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    rgb_mean = max(float((r - x).abs().mean()) for r, x in zip(ref, got, strict=True))
    luma_mean = max(float(((r - x) * luma).sum(0).abs().mean()) for r, x in zip(ref, got, strict=True))
    worst = max(int((r - x).abs().max()) for r, x in zip(ref, got, strict=True))
    ok = rgb_mean < 1.0 if subsampling == 0 else luma_mean < 1.0 and rgb_mean < 5.0
    out = {"ok": ok, "max_rel_diff": worst, "mean_abs_diff": rgb_mean, "luma_mean_abs_diff": luma_mean,
           "unit": "grey levels"}
    if subsampling:
        out["chroma_gap"] = max(chroma_upsampling_gap(image) for image in images)
    return out


def chroma_upsampling_gap(image) -> float:
    """Mean RGB difference (grey levels) between two decodings of `image`'s 4:2:0 chroma (2 x 2 averages):
    replicated (nearest) against interpolated (bilinear, as libjpeg-turbo's fancy upsampling), luma kept."""
    import numpy as np
    import torch.nn.functional as F

    ycc = torch.from_numpy(np.asarray(image.convert("YCbCr"), dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = ycc.shape[-2:]
    chroma = F.avg_pool2d(ycc[:, 1:], 2, ceil_mode=True)
    near = F.interpolate(chroma, scale_factor=2, mode="nearest")[..., :h, :w]
    smooth = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]

    def rgb(cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:  # JFIF YCbCr -> RGB
        y, cb, cr = ycc[0, 0], cb - 128, cr - 128
        return torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb]).clamp(0, 255).round()

    return float((rgb(*near[0]) - rgb(*smooth[0])).abs().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="fmnist-mocov3-repre,fmnist-dino-repre,fmnist-moby-repre")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of this script
    args = p.parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "cuda_check", "passed": False, "error": "no CUDA device"}))
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    checks: dict[str, dict] = {}
    for name, c in check_views(dev).items():
        checks[f"views/{name}"] = c
        print(f"{'views/' + name:<52} {'ok' if c['ok'] else 'FAILED'}  {c['max_rel_diff']}", file=sys.stderr,
              flush=True)
    for preset in args.presets.split(","):
        for name, c in check_preset(preset, dev).items():
            checks[f"{preset}/{name}"] = c
            print(f"{preset + '/' + name:<52} {'ok' if c['ok'] else 'FAILED'}  {c.get('max_rel_diff', '')}",
                  file=sys.stderr, flush=True)
    passed = all(c["ok"] for c in checks.values())
    print(json.dumps({"benchmark": "cuda_check", "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
                      "torch": torch.__version__, "passed": passed, "checks": checks}))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
