#!/usr/bin/env bash
# GPU check: CUDA correctness, then throughput and MFU, then quality benchmark runs on the GPU, in stages.
# Each stage has its own time limit and writes <stage>.json and <stage>.log as soon as it finishes (a failed or
# timed-out stage writes {"failed": true}; throughput.py prints what it has so far after each configuration,
# or with --in-process after each round, so a timed-out throughput stage keeps those, with its exit status) into a work folder that is packed into $OUT/gpu-check.tgz after every
# stage, or after the group for the correctness stages, which run side by side. $OUT stays small (one archive and
# summary.txt, however many stages ran) and the archive is current whenever the check is stopped; the compact
# table is printed last and written to $OUT/summary.txt. STAGES picks stages (default: all but quality and the
# cost targets, STAGES=targets, whose five stages are limited to 1,080 s together: run them in parts within one
# call's limit, the issue's four presets first, e.g. STAGES="targets-vit-s16 targets-vit-b16 targets-dino
# targets-moby" BUDGET=580, then again with the stages it lists as skipped; BUDGET cuts or skips the later ones).
# Runs from the source tree with the machine's own torch and timm: no installs, no network.
# BUDGET (seconds, default 300) bounds the whole check: the stages run in order of importance (correctness and
# the test suite; ViT-S/16 MoCo v3 +- RePre; DINO +- RePre; real JPEGs; ViT-B/16; the rest), each within what
# is left of it, and those it leaves no time for are listed as skipped (on an H200 the correctness group takes
# ~200 s and each throughput stage 60 to 230 s: BUDGET=900 for every default stage).
#
#   OUT=/tmp/gpu [STAGES="cuda-check profile ..."] [BUDGET=S] [QUALITY_UNTIL=S] bash benchmarks/gpu_check.sh
#
# The Fashion-MNIST IDX files are read from $FMNIST (default .gpu-data/fashion-mnist, inside the source tree:
# copy /usr/share/datasets/fashion-mnist there when the GPU machine has no dataset package); the stages that need
# them are skipped without it.
# QUALITY_JOBS=FILE replaces the quality stage's job list (one line of quality.py arguments a job; # comments).
# QUALITY_SET="--set train.max_steps=3 ..." shrinks the quality runs for a dry run of this script (with
# QUALITY_LANES=2 on a small machine).
set -u
START=$(date +%s)
BUDGET=${BUDGET:-300}
cd "$(dirname "$0")/.."
export PYTHONPATH=src
PACK=${OUT:-/tmp/repre-gpu-check}
OUT=$(mktemp -d /tmp/repre-gpu-work.XXXX)  # every stage's files; packed into $PACK/gpu-check.tgz
FMNIST=${FMNIST:-.gpu-data/fashion-mnist}
mkdir -p "$PACK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())" \
  > "$OUT/versions.txt" 2>&1
nproc >> "$OUT/versions.txt"
# what a new Python process costs there (the subprocess-heavy tests start dozens): importing torch and timm, and
# resolving the host's name (torchrun's rendezvous does; slow where DNS is unreachable)
timeout -k 5 60 python - >> "$OUT/versions.txt" 2>&1 <<'PY'
import socket, subprocess, sys, time
t = time.perf_counter(); subprocess.run([sys.executable, "-c", "import torch, timm"]); imp = time.perf_counter() - t
t = time.perf_counter(); socket.getfqdn(); fqdn = time.perf_counter() - t
print(f"new process importing torch and timm: {imp:.1f} s; socket.getfqdn(): {fqdn:.2f} s")
PY
cat "$OUT/versions.txt"

pack() {  # everything but checkpoints, TensorBoard files and generated JPEGs, in one archive in $PACK
  tar czf "$PACK/gpu-check.tgz.part" -C "$OUT" --exclude='*.pt' --exclude=checkpoints --exclude=tb --exclude=jpegs . \
    && mv "$PACK/gpu-check.tgz.part" "$PACK/gpu-check.tgz"
}

within() {  # within N: N seconds, or what is left of BUDGET if less (10 s kept for the summary and the archive)
  local left=$(( START + BUDGET - 10 - $(date +%s) ))
  echo $(( $1 < left ? $1 : left ))
}

stage() {  # stage NAME TIMEOUT_S COMMAND...: the command's last stdout line (JSON) becomes $OUT/NAME.json
  local name=$1 limit; limit=$(within "$2"); shift 2
  local start=$(date +%s)
  if [ "$limit" -lt 20 ]; then  # no time left in BUDGET
    echo "{\"stage\": \"$name\", \"skipped\": \"budget\"}" > "$OUT/$name.json"
    echo "stage $name: skipped (BUDGET=$BUDGET s spent)" | tee -a "$OUT/stages.txt"
    return
  fi
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  # the log's last JSON line (a stage stopped by its limit: what it printed so far, with its exit status; stderr
  # lines may follow it), else a line that says the stage failed
  python - "$OUT/$name.log" "$OUT/$name.json" "$name" "$code" <<'PY'
import json, sys
log, out, name, code = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
found = {"stage": name, "failed": code != 0, "exit": code}
for line in reversed(open(log, errors="replace").read().splitlines()):
    try:
        d = json.loads(line)
    except ValueError:
        continue
    if isinstance(d, dict):
        found = d if code == 0 else {**d, "exit": code}
        break
open(out, "w").write(json.dumps(found) + "\n")
PY
  echo "stage $name: exit $code after $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
  [ -n "${NO_PACK:-}" ] || pack
}

STAGES=${STAGES:-"cuda-check ddp-nccl sync-check tests vit-s16-224 vit-b16-224 vit-s16-224-eager real-data-compiled real-data decoder-speed view-speed frameworks-224 profile host-sync real-data-shards default-preset"}
want() { [[ " $STAGES " == *" $1 "* || ( " $STAGES " == *" targets "* && $1 == targets-* ) ]]; }
JPEGS="$OUT/jpegs"  # ImageNet-sized JPEGs generated here, as a folder and as tar shards (real-data stages)
if want real-data || want real-data-compiled || want real-data-shards; then
  python benchmarks/make_jpegs.py "$JPEGS" --train 4096 --val 64 --shard-size 512 > "$OUT/make-jpegs.log" 2>&1 &
fi

# 1. correctness, in parallel (nothing here is timed): CPU vs CUDA losses and gradients (fp32), bf16 vs fp32,
#    device crops / nvJPEG / photometric stage vs the CPU, a CUDA checkpoint read on CPU; the distributed path on
#    this GPU (torchrun with one process: NCCL, DDP, SyncBatchNorm, every collective) against a plain process;
#    host synchronisations left in the step (CUDA's sync debug mode), per framework and input placement; the
#    test suite on this machine's torch and timm (device auto: CUDA)
if want cuda-check || want ddp-nccl || want sync-check || want tests; then
  SYNC_JPEGS=$(mktemp -d /tmp/repre-sync-jpegs.XXXX)
  export NO_PACK=1  # one archive written after the group, not by four stages at once
  want cuda-check && stage cuda-check 150 python benchmarks/cuda_check.py &
  want ddp-nccl && stage ddp-nccl 150 python benchmarks/ddp_check.py --device cuda --procs 1 --steps 10 &
  want sync-check && { python benchmarks/make_jpegs.py "$SYNC_JPEGS" --train 256 --val 16 --shard-size 256 \
    > /dev/null 2>&1; stage sync-check 200 python benchmarks/sync_check.py --jpegs "$SYNC_JPEGS/folder"; } &
  # every failure listed (no -x); pytest processes side by side (half the cores, at least 6), the 2-process and
  # kill-and-resume tests spread over them so that the suite fits the stage's limit; the units left 15 s before
  # that limit (TESTS_LIMIT, default 200 s, and within BUDGET) are killed and named
  TL=$(within "${TESTS_LIMIT:-200}")
  want tests && python -c "import pytest" 2>/dev/null && stage tests "$TL" \
    python benchmarks/suite_lanes.py --lanes $(( $(nproc) > 12 ? $(nproc) / 2 : 6 )) --deadline $(( TL - 15 )) &
  wait
  unset NO_PACK
  rm -rf "$SYNC_JPEGS"
  pack
fi
wait  # the JPEGs

SYN="--set data.name=synthetic --set train.device=cuda --set train.precision=bf16 --set data.synthetic_train=512"

# 1b. RePre's cost against its baseline, each GPU preset compiled (the Swin-T preset itself runs eager: its row is
#     the compiled step, never compiled on a GPU before, its compile time unknown), bf16, 224 px, pre-made batches: the
#     step-time ratio, MFU (against the matmul peak measured in the run and against the data sheet's) and the
#     peak CUDA memory of each step, 3 interleaved rounds of 10 steps after 3 warm-up steps, each configuration
#     compiled once (throughput.py --in-process); MoCo v3 ViT-S/16 and ViT-B/16 at batch 256, DINO ViT-S/16 with
#     its preset's multi-crop and MoBY Swin-T at batch 128; then where each step's time goes (--profile: by kind
#     of kernel, with the matmul, attention and convolution kernels' FLOP/s against the measured peak, and the
#     time no kernel runs): what bounds the MFU. Not in the default STAGES: STAGES=targets (or any of targets-vit-s16,
#     targets-vit-b16, targets-vit-s16-b512, targets-dino, targets-moby).
TARGETS="--in-process --rounds 3 --steps 10 --warmup 3 --mfu --profile --configs repre-tensors,baseline-tensors \
  $SYN --set train.compile=true"
want targets-vit-s16 && stage targets-vit-s16 200 python benchmarks/throughput.py $TARGETS \
  --preset in1k-vit-s16-mocov3-repre --set train.batch_size=256
want targets-vit-b16 && stage targets-vit-b16 200 python benchmarks/throughput.py $TARGETS \
  --preset in1k-vit-b16-mocov3-repre --set train.batch_size=256
want targets-dino && stage targets-dino 240 python benchmarks/throughput.py $TARGETS \
  --preset in1k-vit-s16-dino-repre --set train.batch_size=128
want targets-moby && stage targets-moby 240 python benchmarks/throughput.py $TARGETS \
  --preset in1k-swin-t-moby-repre --set train.batch_size=128
# the per-GPU batch as a lever on ViT-S/16's MFU: the same two steps at 512 images (after the four presets)
want targets-vit-s16-b512 && stage targets-vit-s16-b512 200 python benchmarks/throughput.py $TARGETS \
  --preset in1k-vit-s16-mocov3-repre --set train.batch_size=512

# 2. throughput (bf16, timed one stage at a time): ViT-S/16 at 224, MoCo v3 +- RePre and the supervised reference
#    step, as the preset runs (compiled, nearest x2 steps to stride 4, then a 4x4 pixel shuffle, one view of each
#    image reconstructed), with MFU; RePre again with both views reconstructed (recon.views=2), and with both
#    views and the x2 steps to full resolution (the preset before both; the other two steps have no decoder and
#    are not rerun)
VIT="--preset in1k-vit-s16-mocov3-repre $SYN --set train.batch_size=256"
want vit-s16-224 && stage vit-s16-224 260 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 --mfu \
  --configs repre-tensors,baseline-tensors,supervised-tensors $VIT --compare recon.views=2 \
  --compare 'recon.views=2&recon.out_stride=1'

# DINO (multi-crop) at 224 +- RePre, eager and compiled (as the preset runs); RePre again with one view, and with
# the x2 steps to full resolution (recon.out_stride=1, the preset before)
if want frameworks-224 || want dino-224; then
  stage dino-vit-s16-224 420 python benchmarks/throughput.py --rounds 1 --steps 8 --warmup 3 \
    --configs repre-tensors,baseline-tensors --preset in1k-vit-s16-dino-repre $SYN --set train.batch_size=128 \
    --set train.compile=false --compare train.compile=true --compare recon.views=1 --compare recon.out_stride=1
fi

# 2b. real data: the JPEG folder decoded and cropped in the workers (the photometric stage on the GPU:
#     data.device_stages=auto) against the same step on pre-made tensors (real / synthetic: is the input the
#     bottleneck?), compiled as the preset runs (with the baseline step: RePre's overhead and MFU as it runs);
#     then eager with the crops on the GPU (data.device_stages=crops) and the crops plus nvJPEG decoding
#     (data.device_stages=decode), the workers only reading files (on pre-made tensors the device placements redo
#     their work on the same batch every step: their cost inside the step)
REAL="--preset in1k-vit-s16-mocov3-repre --set train.device=cuda --set train.precision=bf16 \
  --set train.batch_size=256 --set train.num_workers=$(( $(nproc) - 2 ))"
if [ -d "$JPEGS/folder" ]; then
  want real-data-compiled && stage real-data-compiled 200 python benchmarks/throughput.py --rounds 1 --steps 10 \
    --warmup 3 --mfu --configs repre,repre-tensors,baseline-tensors $REAL --set data.name=folder \
    --set data.root="$JPEGS/folder"
  want real-data && stage real-data 200 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 \
    --configs repre,repre-tensors $REAL --set data.name=folder --set data.root="$JPEGS/folder" \
    --set train.compile=false \
    --compare data.device_stages=crops --compare data.device_stages=decode
  want real-data-shards && stage real-data-shards 60 python benchmarks/throughput.py --rounds 1 --steps 10 \
    --warmup 3 --configs repre $REAL --set data.name=shards --set data.root="$JPEGS/shards"
fi
rm -rf "$JPEGS"

# ViT-B/16 at 224, compiled
want vit-b16-224 && stage vit-b16-224 190 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 --mfu \
  --configs repre-tensors,baseline-tensors $VIT --set model.arch=vit_base_patch16_224 --compare recon.views=2

# the same three eager (what compiling is worth)
want vit-s16-224-eager && stage vit-s16-224-eager 120 python benchmarks/throughput.py --rounds 1 --steps 10 \
  --warmup 3 --mfu --configs repre-tensors,baseline-tensors,supervised-tensors $VIT --set train.compile=false

# 2c. the decoder alone (ViT-S/16 shapes, batch 512 views): eager against compiled, bilinear against nearest,
#     the x2 steps to full resolution against a 4x4 pixel shuffle from stride 4 (recon.out_stride=4)
want decoder-speed && stage decoder-speed 120 python benchmarks/decoder_speed.py --batch 512 \
  --variants bilinear-nchw,bilinear-compiled,nearest-nchw,nearest-compiled,nearest-compiled-s4,bilinear-compiled-s4
# 2d. what the views cost on the GPU: crops of a batch as matrix products from pixels, and from JPEG bytes decoded
#     by nvJPEG, then the photometric stage; against one CPU worker's decode + crops (ms per image)
if want view-speed; then
  stage view-speed 60 python benchmarks/view_speed.py --device cuda --images 128 --batch 64 --rounds 1
  stage view-speed-dino 60 python benchmarks/view_speed.py --device cuda --images 64 --batch 32 --rounds 1 \
    --local-crops 10
fi
# 2e. MoBY (Swin-T) at 224 +- RePre, eager and compiled (whether its preset should compile too); where a RePre
#     step's time goes (eager); the step without host synchronisation
#     (train.host_sync=log, the GPU default) against one sync a step; the default preset (28 px) on real
#     Fashion-MNIST and on pre-made tensors
# (frameworks-224 = dino-224 + moby-224)
if want frameworks-224 || want moby-224; then
  stage moby-swin-t-224 240 python benchmarks/throughput.py --rounds 1 --steps 8 --warmup 3 \
    --configs repre-tensors,baseline-tensors --preset in1k-swin-t-moby-repre $SYN --set train.batch_size=128 \
    --compare train.compile=true --compare recon.upsample=bilinear
fi
want profile && stage profile 90 python benchmarks/profile_step.py $VIT --set train.compile=false
want host-sync && stage host-sync 120 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 \
  --configs repre-tensors $VIT --compare train.host_sync=step
if [ -d "$FMNIST" ] && want default-preset; then
  stage default-preset 60 python benchmarks/throughput.py --rounds 1 --steps 30 --warmup 5 --mfu \
    --configs repre,baseline,repre-tensors,baseline-tensors --set data.root="$FMNIST" \
    --set train.device=cuda --set train.num_workers=8
fi

# 3. quality: benchmarks/quality.py runs as a queue of jobs, most important first, QUALITY_LANES at a time, until
#    QUALITY_UNTIL seconds after this script started; each finished evaluation is cached, so what finishes
#    is kept and reported (locally: quality.py --results <unpacked>/quality, which skips cached work)
quality_jobs() {  # one line per job: quality.py arguments; QUALITY_JOBS=FILE: that file's lines instead
  # a comment ends a line (pasted into a command, it would comment out the options after it)
  if [ -n "${QUALITY_JOBS:-}" ]; then sed -e 's/[[:space:]]*#.*$//' "$QUALITY_JOBS" | grep -v '^ *$'; return; fi
  # DINO's knobs at batch 32 on validation seeds 0-2 (its preset; batch 16 x 3,200 steps, where batches 256 to
  # 32 raised k-NN and lowered the teacher's entropy; the longer warm-up that lifted MoCo v3; a milder
  # teacher-temperature warm-up)
  for s in 0 1 2; do for p in base b16 warm0.2 tt-warm0.055; do
    echo "--methods dino --search $p --seeds $s --only knn,linear"
  done; done
  # the default preset's knobs not yet tried at batch 64 (validation seeds 0-2, each against the preset's pair)
  for s in 0 1 2; do for p in base repre tau0.1 tau0.3 lam0.5 lam2 crop0.4; do
    echo "--methods mocov3 --search $p --seeds $s --only knn,linear"
  done; done
  for s in 1 2 3; do echo "--methods mocov3 --seeds $s --rows random,supervised"; done
}
quality_queue() {  # every job ends by DEADLINE (epoch seconds): none is left running after the stage
  quality_jobs | xargs -P "$QUALITY_LANES" -I{} bash -c "left=\$(( $DEADLINE - \$(date +%s) )); \
    [ \$left -gt 5 ] || exit 0; OMP_NUM_THREADS=2 timeout -k 5 \$left python benchmarks/quality.py {} \
    --results '$OUT/quality' --drop-checkpoints --set data.root='$FMNIST' --set train.num_workers=2 \
    $QUALITY_SET >> '$OUT/quality-jobs.log' 2>&1; echo \"job exit \$?: {}\" >> '$OUT/quality-jobs.log'"
}
if [ -d "$FMNIST" ] && want quality; then
  QU=${QUALITY_UNTIL:-520}
  DEADLINE=$(( START + (QU < BUDGET - 30 ? QU : BUDGET - 30) ))  # within BUDGET too
  stage quality $(( DEADLINE - $(date +%s) + 20 )) bash -c "$(declare -f quality_jobs quality_queue); \
    OUT='$OUT' FMNIST='$FMNIST' DEADLINE=$DEADLINE QUALITY_SET='${QUALITY_SET:-}' \
    QUALITY_LANES=${QUALITY_LANES:-7} quality_queue; echo '{\"stage\": \"quality\"}'"
  grep "^job exit" "$OUT/quality-jobs.log" > "$OUT/quality-jobs.txt" 2>/dev/null
  pack
fi

python - "$OUT" > "$OUT/summary.txt" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def show(f: pathlib.Path, d: dict) -> None:
    if d.get("benchmark") == "throughput":
        for name, row in d["results"].items():
            mfu = f"{row['mfu']:.3f}" if row.get("mfu") is not None else "-"
            sheet = f"{row['mfu_datasheet']:.3f}" if row.get("mfu_datasheet") is not None else "-"
            mem = f"{row['peak_cuda_mb']:.0f}" if row.get("peak_cuda_mb") else "-"
            print(f"{f.stem:<22}{name:<20}{row['images_per_sec']:>10.1f} img/s  MFU {mfu} (data sheet {sheet})"
                  f"  {mem} MB CUDA")
        for name, row in d["results"].items():  # --profile: each kind's share of the step (and of the peak)
            if row.get("bound"):
                print(f"{f.stem:<22}{name:<20}" + ", ".join(
                    f"{k} {v['share']:.0%}" + (f" at {v['of_peak']:.0%} of peak" if v["of_peak"] else "")
                    for k, v in row["bound"].items()))
        print(f"{f.stem:<22}ratios {json.dumps({k: round(v, 3) for k, v in d['ratios'].items()})}")
        for name, why in d.get("failed", {}).items():
            print(f"{f.stem:<22}{name:<20}FAILED {why[-150:]!r}")
    elif d.get("benchmark") == "decoder_speed":
        print(f"{f.stem:<22}ms " + "  ".join(f"{k}={v * 1000:.1f}" for k, v in d["seconds"].items()))
    elif d.get("benchmark") == "cuda_check":
        checks = " ".join(f"{k}={v['ok']}" for k, v in d.get("checks", {}).items())
        print(f"{f.stem:<22}passed={d.get('passed')} {checks or d.get('error', '')}")
    elif d.get("benchmark") == "view_speed":
        print(f"{f.stem:<22}ms/image " + "  ".join(f"{k}={v:.3f}" for k, v in d["ms_per_image"].items()))
    elif d.get("benchmark") == "sync_check":
        for name, found in d["results"].items():
            where = "; ".join(f"{n}x {k}" for k, n in found.items() if isinstance(n, int))[:160]
            print(f"{f.stem:<22}{name:<40}{found.get('error', where or 'no host sync')}")
    elif d.get("benchmark") == "suite_lanes":
        print(f"{f.stem:<22}passed {d['passed']} failed {d['failed']} skipped {d['skipped']}"
              f" in {d['wall_s']} s " + " ".join(x["test"] for x in d["failures"])[:300])
    elif d.get("benchmark") == "profile_step":
        print(f"{f.stem:<22}" + " ".join(f"{k}={v * 1000:.1f}ms" for k, v in d["seconds"].items())
              + " " + json.dumps({k: v if v is None else round(v, 3) for k, v in d["ratios"].items()}))
        for name, rows in d.get("by_kind", {}).items():
            print(f"{f.stem:<22}{name:<20}" + ", ".join(f"{k} {v['share']:.0%}" for k, v in rows.items()))
    else:
        print(f"{f.stem:<22}{json.dumps(d)[:200]}")


for f in sorted(out.glob("*.json")):  # one stage's unexpected file does not cost the others' lines
    d = json.loads(f.read_text())
    try:
        show(f, d)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"{f.stem:<22}({type(exc).__name__} {exc}) {json.dumps(d)[:200]}")
    if d.get("benchmark") and d.get("exit"):  # what a stage stopped by its limit printed before it stopped
        print(f"{f.stem:<22}stopped: exit {d['exit']} (the lines above are partial)")
PY
cat "$OUT/summary.txt" "$OUT/quality-jobs.txt" 2>/dev/null
cp "$OUT/summary.txt" "$PACK/"
pack
rm -rf "$OUT"  # the work folder: everything of it is in the archive
