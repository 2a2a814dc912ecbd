#!/usr/bin/env bash
# One command for a lent GPU: the -m gpu tests, the fused kernels' bandwidth and the DiT-XL/2
# latency rows (bf16, DDIM-20, released DDIM20 router, n = 8 and n = 1, every executor, CUDA
# graphs included; fp32 too; torch.compile and inductor peers at n = 8), each step under its own
# time limit so that the whole script ends within 9 minutes; everything lands in OUT, and the summary sets each target of PERFORMANCE.md beside
# the measured value.
#
#   benchmarks/gpu_check.sh OUT [STEPS]   STEPS: comma-separated, default tests,kernels,latency,compiled,summary
#
# The released routers are read from $L2C_ROUTERS_DIR (default ../shared/data/routers). Runs from a
# checkout without installing it (PYTHONPATH), with whatever python3 holds torch. On a machine
# without CUDA it says so in one line, lists what it would run, and exits 0.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT [tests,kernels,latency,compiled,summary]}
steps=${2:-tests,kernels,latency,compiled,summary}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
routers=${L2C_ROUTERS_DIR:-../shared/data/routers}
py=${PYTHON:-python3}

gpu_tests=$(grep -l "mark.gpu" tests/*.py | tr '\n' ' ')
# The latency rows come in two steps: the executors that need no inductor compile first (seconds
# each), then the compiled peers (torch.compile default / reduce-overhead, inductor step graphs),
# whose compiles take tens of seconds each, so a slow compile never costs the first step its rows.
lat="$py benchmarks/latency.py --matrix --device cuda --only DiT-XL/2 --samplers ddim-20 --routers-dir $routers --repeats 10 --executor-budget 2"
declare -A limit=([tests]=150 [kernels]=50 [latency]=100 [compiled]=170 [summary]=20)
declare -A cmd=(
  [tests]="$py -m pytest -m gpu -q -p no:cacheprovider $gpu_tests"
  [kernels]="$py benchmarks/kernels.py --dtype bf16 --rep-ms 30 --out $out/kernels-gpu.jsonl"
  [latency]="$lat --dtypes bfloat16,float32 --batches 8,1 --cuda-graph --no-inductor-graph --time-limit 40 --deadline 85 --out $out/latency-gpu.jsonl"
  [compiled]="$lat --dtypes bfloat16 --batches 8 --skip-eager --torch-compile --cuda-graph --time-limit 150 --deadline 150 --out $out/latency-gpu-compiled.jsonl"
  [summary]="$py benchmarks/gpu_summary.py $out/latency-gpu.jsonl $out/latency-gpu-compiled.jsonl --kernels $out/kernels-gpu.jsonl --out $out/summary.md"
)

if ! $py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device on this machine; nothing was run. It would run, in $out:"
  for s in ${steps//,/ }; do echo "  [$s, ≤ ${limit[$s]:-?} s] ${cmd[$s]:-unknown step}"; done
  exit 0
fi

mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>&1
status=0
for s in ${steps//,/ }; do
  if [ -z "${cmd[$s]:-}" ]; then echo "gpu_check: unknown step $s" >&2; exit 2; fi
  t0=$(date +%s)
  echo "== $s (limit ${limit[$s]} s): ${cmd[$s]}"
  timeout --kill-after=10 "${limit[$s]}" ${cmd[$s]} > "$out/$s.log" 2>&1
  rc=$?
  echo "== $s: exit $rc in $(( $(date +%s) - t0 )) s"
  tail -n 15 "$out/$s.log"
  [ "$rc" -ne 0 ] && status=1
done
[ -f "$out/summary.md" ] && cat "$out/summary.md"
exit $status
