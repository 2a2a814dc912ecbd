#!/usr/bin/env bash
# Fashion-MNIST reference models, their routers and the quality tables, on a lent GPU, by phase:
#
#   benchmarks/gpu_fmnist.sh models  OUT MINUTES   both models at once (written to the assets)
#   benchmarks/gpu_fmnist.sh routers OUT SECONDS   the router grid, 8 processes, then the defaults
#   benchmarks/gpu_fmnist.sh quality OUT SECONDS   benchmarks/quality.py on CUDA (K = 2,000, 3 seeds)
#
# Each phase leaves its logs and results in OUT and the trained files in the checkout
# (l2c_compile/assets/, benchmarks/results/). Fashion-MNIST comes from $L2C_FMNIST_DIR.
set -u
phase=${1:?usage: gpu_fmnist.sh models|routers|quality OUT BUDGET}
out=${2:?OUT}
budget=${3:?BUDGET}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${L2C_DEVICE:-cuda}  # L2C_DEVICE=cpu and the *_SMOKE sizes below: a quick dry run on a CPU
mkdir -p "$out"

case $phase in
models)
  for m in DiT-FMNIST U-ViT-FMNIST; do
    $py -m l2c_compile.fmnist.train_model --model "$m" --device "$dev" --out "$out/runs/$m" \
      --minutes "$budget" --batch 128 --lr 0.0005 --warmup 500 --ema 0.9995 --grad-clip 1.0 \
      --log-every 1000 --checkpoint-minutes 60 > "$out/train-$m.log" 2>&1 &
  done
  wait
  tail -n 3 "$out"/train-*.log
  ;;
routers)
  r="$py benchmarks/train_fmnist_routers.py --device $dev --out $out/routers ${ROUTER_STEPS_SMOKE:+--steps $ROUTER_STEPS_SMOKE}"
  mkdir -p "$out/routers"
  # The λ grids of the shipped routers (train_fmnist_routers.py), default λ first. On the H200
  # eight such processes at once did not finish one router each in 60 s: give this phase minutes.
  dit=3e-5,1e-5,1e-4,3e-4,1e-3
  uvit=3e-2,1e-3,3e-3,1e-2,0.1
  jobs=(
    "DiT-FMNIST-ddim-20 $dit" "DiT-FMNIST-ddim-10 3e-5" "DiT-FMNIST-ddim-50 3e-5"
    "U-ViT-FMNIST-dpm-solver-2-20 $uvit" "U-ViT-FMNIST-dpm-solver-2-10 3e-2"
    "U-ViT-FMNIST-dpm-solver-2-50 3e-2"
    "DiT-FMNIST-ddim-20-drop" "U-ViT-FMNIST-dpm-solver-2-20-drop"
  )
  for j in "${jobs[@]}"; do
    set -- $j
    grid=${2:+--grid $2}
    timeout --kill-after=5 "$budget" $r --only "$1" $grid --log "$out/routers-$1.jsonl" \
      > "$out/routers-$1.log" 2>&1 &
  done
  wait
  $r --choose-defaults | tee "$out/routers-defaults.log"
  cat "$out"/routers-*.jsonl > "$out/fmnist_routers.jsonl" 2>/dev/null
  rm -f l2c_compile/assets/routers/*FMNIST*
  cp "$out"/routers/*.safetensors "$out"/routers/*.json l2c_compile/assets/routers/
  ;;
quality)
  $py benchmarks/quality.py --device "$dev" --samples "${QUALITY_SAMPLES_SMOKE:-2000}" --seeds 0,1,2 --all-seeds --batch 1000 \
    --deadline "$budget" --out "$out/quality" 2>&1 | tee "$out/quality.log" | tail -n 40
  ;;
*)
  echo "gpu_fmnist.sh: unknown phase $phase" >&2
  exit 2
  ;;
esac
