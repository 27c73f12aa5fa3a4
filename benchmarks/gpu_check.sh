#!/usr/bin/env bash
# GPU check (first version): CUDA smoke test, then throughput of the default preset and of ViT-S/16 at 224,
# each +-RePre, bf16. Each stage writes $OUT/<stage>.json as soon as it finishes; the compact table is last.
# Runs from the source tree with the machine's own torch and timm: no installs, no network. ~5 minutes.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=src
OUT=${OUT:-/tmp/repre-gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())" > "$OUT/versions.txt" 2>&1

stage() {  # stage NAME TIMEOUT_S COMMAND...: the command's last stdout line (JSON) becomes $OUT/NAME.json
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local code=$?
  tail -n 1 "$OUT/$name.log" | python -c "import json,sys; json.loads(sys.stdin.read())" 2>/dev/null \
    && tail -n 1 "$OUT/$name.log" > "$OUT/$name.json" \
    || echo "{\"stage\": \"$name\", \"failed\": true, \"exit\": $code}" > "$OUT/$name.json"
  echo "stage $name: exit $code after $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
}

SYN="--set data.name=synthetic --set train.device=cuda --set train.precision=bf16"
stage smoke 60 python -m repre pretrain --out "$OUT/smoke-run" $SYN --set data.image_size=32 \
  --set train.max_steps=10 --set train.batch_size=64 --set train.log_every=5 --set train.progress=false
python -c "import json,math,sys; d=json.load(open(sys.argv[1])); ok=d.get('completed') and math.isfinite(d['loss']); print('smoke: finite loss' if ok else 'smoke: FAILED'); sys.exit(0 if ok else 1)" "$OUT/smoke.json" | tee -a "$OUT/stages.txt"
stage default-preset 90 python benchmarks/throughput.py --rounds 1 --steps 20 --warmup 5 \
  --configs repre-tensors,baseline-tensors $SYN --set data.synthetic_train=512
stage vit-s16-224 150 python benchmarks/throughput.py --rounds 1 --steps 10 --warmup 3 \
  --preset in1k-vit-s16-mocov3-repre --configs repre-tensors,baseline-tensors $SYN \
  --set data.synthetic_train=256 --set train.batch_size=256 --set train.num_workers=4

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    d = json.loads(f.read_text())
    if d.get("benchmark") == "throughput":
        for name, row in d["results"].items():
            print(f"{f.stem:<16}{name:<18}{row['images_per_sec']:>10.1f} img/s {row['peak_rss_mb']:>8.0f} MB RSS")
        print(f"{f.stem:<16}ratios {json.dumps(d['ratios'])}")
    else:
        print(f"{f.stem:<16}{json.dumps({k: d.get(k) for k in ('completed', 'steps', 'loss', 'images_per_sec', 'failed')})}")
PY
