#!/usr/bin/env bash
# GPU check: CUDA correctness, then throughput and MFU, then the quality search on the GPU, in stages.
# Each stage has its own time limit and writes <stage>.json and <stage>.log as soon as it finishes (a failed or
# timed-out stage writes {"failed": true}) into a work folder that is packed into $OUT/gpu-check.tgz after every
# stage (the device tool returns at most 8 files from $OUT, 2 folders deep); the compact table is printed last
# and written to $OUT/summary.txt. About 6.5 minutes on one H100/H200, 9.5 with SEARCH=1.
# Runs from the source tree with the machine's own torch and timm: no installs, no network.
#
#   OUT=/tmp/gpu [SEARCH=1] bash benchmarks/gpu_check.sh
#
# The Fashion-MNIST IDX files are read from .gpu-data/fashion-mnist (copy /usr/share/datasets/fashion-mnist
# there and carry it to the GPU machine); the stages that need them are skipped without it.
# SEARCH_SET="--set train.max_steps=3 ..." shrinks the search for a dry run of this script.
set -u
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
cat "$OUT/versions.txt"

pack() {  # everything but checkpoints and TensorBoard files, in one archive that the device tool returns
  tar czf "$PACK/gpu-check.tgz.part" -C "$OUT" --exclude='*.pt' --exclude=checkpoints --exclude=tb . \
    && mv "$PACK/gpu-check.tgz.part" "$PACK/gpu-check.tgz"
}

stage() {  # stage NAME TIMEOUT_S COMMAND...: the command's last stdout line (JSON) becomes $OUT/NAME.json
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  tail -n 1 "$OUT/$name.log" | python -c "import json,sys; json.loads(sys.stdin.read())" 2>/dev/null \
    && tail -n 1 "$OUT/$name.log" > "$OUT/$name.json" \
    || echo "{\"stage\": \"$name\", \"failed\": true, \"exit\": $code}" > "$OUT/$name.json"
  echo "stage $name: exit $code after $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
  pack
}

# 1. correctness: CPU vs CUDA losses and gradients (fp32), bf16 vs fp32, a CUDA checkpoint read on CPU
stage cuda-check 50 python benchmarks/cuda_check.py

# 2. with SEARCH=1 (3 more minutes): the quality search (benchmarks/quality.py --search, eval.split=val) in
#    5 parallel lanes, one seed; what finishes in time is reported
search_lanes() {
  local lanes=("long-base,lam0.5,lam10,normpix" "long,lam2,taps-last,l2" "base,repre,lam10-cos0,depth3"
               "scenes-base,scenes,lam5,width64" "lam0.1,taps-2,lam0-cos10,width16")
  for points in "${lanes[@]}"; do
    OMP_NUM_THREADS=3 python benchmarks/quality.py --search "$points" --seeds 0 --results "$OUT/quality" \
      --drop-checkpoints --set data.root="$FMNIST" --set train.num_workers=2 ${SEARCH_SET:-} \
      > "$OUT/search-$(echo "$points" | cut -d, -f1).log" 2>&1 &
  done
  wait
}
if [ -d "$FMNIST" ] && [ "${SEARCH:-0}" = 1 ]; then
  stage search-runs 170 bash -c "$(declare -f search_lanes); OUT='$OUT' FMNIST='$FMNIST' SEARCH_SET='${SEARCH_SET:-}' search_lanes"
  stage search 20 python benchmarks/quality.py --search all --seeds 0 --cached --results "$OUT/quality"
fi

# 3. throughput (bf16): the default preset on real data and on pre-made tensors; ViT-S/16 and ViT-B/16 at 224
SYN="--set data.name=synthetic --set train.device=cuda --set train.precision=bf16"
if [ -d "$FMNIST" ]; then
  stage default-preset 60 python benchmarks/throughput.py --rounds 1 --steps 30 --warmup 5 --mfu \
    --configs repre,baseline,repre-tensors,baseline-tensors --set data.root="$FMNIST" \
    --set train.device=cuda --set train.num_workers=8
fi
VIT="--preset in1k-vit-s16-mocov3-repre $SYN --set data.synthetic_train=512 --set train.batch_size=256"
stage vit-s16-224 70 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 --mfu \
  --configs repre-tensors,baseline-tensors,supervised-tensors $VIT
stage vit-b16-224 55 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 --mfu \
  --configs repre-tensors,baseline-tensors $VIT --set model.arch=vit_base_patch16_224
stage vit-s16-224-compiled 120 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 --mfu \
  --configs repre-tensors,baseline-tensors $VIT --set train.compile=true

# 4. the test suite on this machine's torch and timm (device auto: CUDA)
python -c "import pytest" 2>/dev/null && stage tests 40 python -m pytest -x -q -p no:cacheprovider tests

python - "$OUT" > "$OUT/summary.txt" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    d = json.loads(f.read_text())
    if d.get("benchmark") == "throughput":
        for name, row in d["results"].items():
            mfu = f"{row['mfu']:.3f}" if row.get("mfu") is not None else "-"
            mem = f"{row['peak_cuda_mb']:.0f}" if row.get("peak_cuda_mb") else "-"
            print(f"{f.stem:<22}{name:<20}{row['images_per_sec']:>10.1f} img/s  MFU {mfu}  {mem} MB CUDA")
        print(f"{f.stem:<22}ratios {json.dumps({k: round(v, 3) for k, v in d['ratios'].items()})}")
    elif d.get("benchmark") == "cuda_check":
        print(f"{f.stem:<22}passed={d['passed']} " + " ".join(f"{k}={v['ok']}" for k, v in d["checks"].items()))
    elif d.get("benchmark") == "quality-search":
        print(f"{f.stem:<22}{len(d['values'])} points; the table is in search.log")
    else:
        print(f"{f.stem:<22}{json.dumps(d)[:200]}")
PY
cat "$OUT/summary.txt" "$OUT/search.log" 2>/dev/null | grep -v '^search seed' | grep -v '^{'
cp "$OUT/summary.txt" "$PACK/"
pack
