"""The RePre decoder alone, forward + backward with its L1 loss, in memory-format and upsampling variants.

    PYTHONPATH=src python benchmarks/decoder_speed.py [--batch 512] [--device cuda]

Shapes of ViT-S/16 at 224 (4 taps of [N, 384, 14, 14], width 128 halving to 8 over 4 x2 steps to 224 px).
Variants (--variants): `<upsampling>-<mode>`, upsampling bilinear or nearest, mode nchw (eager), channels_last
(eager) or compiled (torch.compile of the decoder, as train.compile=true does). Prints a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from repre.models.decoder import Decoder


def run(decoder: Decoder, maps: list[torch.Tensor], target: torch.Tensor, steps: int) -> float:
    times = []
    for i in range(steps + 3):
        torch.cuda.synchronize() if target.is_cuda else None
        start = time.perf_counter()
        with torch.autocast(target.device.type, dtype=torch.bfloat16):
            loss = F.l1_loss(decoder(maps, target.shape[-2:]).float(), target)
        loss.backward()
        torch.cuda.synchronize() if target.is_cuda else None
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--variants", default="bilinear-nchw,nearest-nchw,bilinear-channels_last,nearest-channels_last",
                   help="comma-separated <bilinear|nearest>-<nchw|channels_last|compiled>; the first is the base")
    args = p.parse_args()
    dev = torch.device(args.device)
    results = {}
    for variant in args.variants.split(","):
        upsample, mode = variant.split("-", 1)
        torch.manual_seed(0)
        memory = torch.channels_last if mode == "channels_last" else torch.contiguous_format
        decoder = Decoder([384] * 4, 16, 128, 8, upsample=upsample).to(dev, memory_format=memory)
        if mode == "compiled":
            decoder.compile()
        maps = [torch.randn(args.batch, 384, 14, 14, device=dev).contiguous(memory_format=memory)
                .requires_grad_(True) for _ in range(4)]
        target = torch.randn(args.batch, 3, 224, 224, device=dev)
        results[variant] = run(decoder, maps, target, args.steps)
        print(f"{variant:<24}{results[variant] * 1000:9.2f} ms", flush=True)
    base = results[args.variants.split(",")[0]]
    print(json.dumps({"benchmark": "decoder_speed", "device": torch.cuda.get_device_name() if dev.type == "cuda"
                      else "cpu", "batch": args.batch, "torch": torch.__version__, "seconds": results,
                      "speedup_over_first": {k: base / v for k, v in results.items()},
                      "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
