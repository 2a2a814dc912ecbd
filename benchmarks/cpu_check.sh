#!/usr/bin/env bash
# The CPU measurements of issue 13 in one command (run on a quiet machine; about 35 minutes on
# 2 cores): GEMM GFLOP/s by library, DiT-XL/2 DDIM-20 n=1 + CFG with the released router in
# float32 and bfloat16 (eager uncached, eager reference L2C, torch.compile of the uncached model,
# l2c-compile's regional backend uncached and L2C), and the compile cost of a cold vs a warm load.
#
#   benchmarks/cpu_check.sh OUT [THREADS]
#
# Everything is written under OUT (JSON lines + markdown); nothing else is touched.
set -euo pipefail
out=${1:?usage: benchmarks/cpu_check.sh OUT [THREADS]}
threads=${2:-2}
here=$(cd "$(dirname "$0")" && pwd)
routers=${L2C_ROUTERS:-$here/../../shared/data/routers}
mkdir -p "$out"
echo "== GEMM GFLOP/s"
python "$here/gemm_cpu.py" --threads "$threads" --out "$out/gemm-cpu.jsonl"
# bf16 adds the inductor step graphs (L2C only: 11 compiles): there the glue between the GEMMs is
# a large share of the time, and only whole-step compilation fuses it.
for dtype in float32 bfloat16; do
  executors=eager-uncached,eager-l2c,torch-compile-default-uncached,regional-uncached,regional-l2c
  [ "$dtype" = bfloat16 ] && executors=$executors,inductor-l2c
  echo "== DiT-XL/2 $dtype"
  python "$here/latency.py" --model DiT-XL/2 --nfe 20 --batch 1 --dtype "$dtype" --device cpu \
    --router "$routers/DDIM20_router.pt" --threshold 0.1 --threads "$threads" --repeats 1 \
    --regional --inductor --torch-compile --executors "$executors" \
    --out "$out/latency-cpu-dit-xl.jsonl"
done
echo "== compile cost (DiT-S/2, fresh processes)"
python "$here/compile_cost.py" --model DiT-S/2 --nfe 20 --threads "$threads" \
  --backends eager,regional,inductor --out "$out/compile-cost.jsonl"
# DiT-S/2: every executor, inductor step graphs included; a random schedule skipping the released
# DDIM20 router's 44 % of cache-step sublayers (the router itself is DiT-XL/2's)
for dtype in float32 bfloat16; do
  echo "== DiT-S/2 $dtype"
  python "$here/latency.py" --model DiT-S/2 --nfe 20 --batch 1 --dtype "$dtype" --device cpu \
    --heuristic random --fraction 0.44 --threads "$threads" --repeats 2 \
    --interleave --regional --inductor --torch-compile --out "$out/latency-cpu-dit-s.jsonl"
done
echo "== summary"
python "$here/cpu_summary.py" "$out"
