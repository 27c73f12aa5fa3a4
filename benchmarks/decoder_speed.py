"""The RePre decoder alone, forward + backward with its L1 loss, in memory-format and upsampling variants.

    PYTHONPATH=src python benchmarks/decoder_speed.py [--batch 512] [--device cuda] [--steps 10] [--variants ...]

Shapes of ViT-S/16 at 224 (4 taps of [N, 384, 14, 14], width 128 halving to 8 over 4 x2 steps to 224 px).
Variants (--variants): `<upsampling>-<mode>[-s<out_stride>]`, upsampling bilinear or nearest, mode nchw (eager),
channels_last (eager, the decoder's activations too) or compiled (torch.compile of the decoder;
train.compile=true compiles it together with its loss and the choice of the tap maps), out_stride as
recon.out_stride (default 1).
The tap maps are what a ViT gives in training, views of its [N, 196, 384] tokens (channels last), except in
channels_last mode, where they are channels-last copies. Prints a JSON line last. Beside the times, every
variant's forward FLOPs and the values its layers write per view (bf16 MB: the memory traffic that bounds it
on a GPU), counted on the CPU.
`--count-only` skips the timing (any machine).
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
                   help="comma-separated <bilinear|nearest>-<nchw|channels_last|compiled>[-s<out_stride>]; the "
                        "first is the base")
    p.add_argument("--count-only", action="store_true", help="FLOPs and written values only, no timing")
    args = p.parse_args()
    dev = torch.device(args.device)
    results, counts = {}, {}
    for variant in args.variants.split(","):
        upsample, mode, *rest = variant.split("-")
        out_stride = int(rest[0][1:]) if rest else 1
        torch.manual_seed(0)
        decoder = Decoder([384] * 4, 16, 128, upsample=upsample, out_stride=out_stride)
        counts[variant] = count(decoder)
        print(f"{variant:<24}{counts[variant]['gflops_per_view']:7.3f} GFLOP/view "
              f"{counts[variant]['written_mb_per_view']:6.2f} MB/view written", flush=True)
        if args.count_only:
            continue
        memory = torch.channels_last if mode == "channels_last" else torch.contiguous_format
        decoder = decoder.to(dev, memory_format=memory)
        if mode == "compiled":
            decoder.compile()
        tokens = [torch.randn(args.batch, 196, 384, device=dev, requires_grad=True) for _ in range(4)]
        maps = [t.unflatten(1, (14, 14)).permute(0, 3, 1, 2) for t in tokens]  # [N, 384, 14, 14] views
        if mode == "channels_last":
            maps = [m.contiguous(memory_format=memory) for m in maps]
        target = torch.randn(args.batch, 3, 224, 224, device=dev)
        results[variant] = run(decoder, maps, target, args.steps)
        print(f"{variant:<24}{results[variant] * 1000:9.2f} ms", flush=True)
    base = results[args.variants.split(",")[0]] if results else None
    name = (torch.cuda.get_device_name() if dev.type == "cuda" else "cpu") if results else None
    print(json.dumps({"benchmark": "decoder_speed", "device": name, "batch": args.batch, "torch": torch.__version__,
                      "seconds": results, "speedup_over_first": {k: base / v for k, v in results.items()},
                      "per_view": counts,
                      "date": time.strftime("%Y-%m-%d")}))


def count(decoder: Decoder) -> dict[str, float]:
    """One view's forward FLOPs (torch.utils.flop_counter) and the values every leaf module and interpolation
    writes, as bf16 MB; on the CPU, before the decoder moves."""
    from torch.utils.flop_counter import FlopCounterMode

    written = []
    hooks = [m.register_forward_hook(lambda m, i, o: written.append(o.numel()))
             for m in decoder.modules() if not list(m.children())]
    # the x2 upsampling outputs are no module's: they are the inputs of the blocks after them
    hooks += [b.register_forward_pre_hook(lambda m, i: written.append(i[0].numel())) for b in decoder.up]
    maps = [torch.randn(1, 384, 14, 14) for _ in range(4)]
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        decoder(maps, (224, 224))
    for h in hooks:
        h.remove()
    return {"gflops_per_view": flops.get_total_flops() / 1e9, "written_mb_per_view": 2 * sum(written) / 2**20}


if __name__ == "__main__":
    main()
