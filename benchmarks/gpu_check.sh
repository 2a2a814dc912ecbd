#!/usr/bin/env bash
# One command for a lent GPU, most important first, each step under its own time limit so that the
# default steps end within 9 minutes: the -m gpu tests; the DiT-XL/2 latency rows (bf16 and fp32,
# DDIM-20, released DDIM20 router, n = 8 and 1, CUDA graphs included); the peers on diffusers
# pipelines (benchmarks/peers.py: pipe(...), torch.compile modes, cache-dit, compile_pipeline) on
# DiTPipeline DiT-XL/2 (n = 8, then 1), then on PixArt-α 512; the summary, which sets each target
# of PERFORMANCE.md beside the measured value. Every row is written as it is measured into OUT.
#
#   benchmarks/gpu_check.sh OUT [STEPS]   STEPS: comma-separated, default tests,latency,peers-dit,peers-pixart,summary
#                                         (also: kernels, compiled — the sampler-level torch.compile and
#                                         inductor peers of latency.py; peers-sd3, peers-flux, peers-wan —
#                                         the peers at full size on SD3.5-medium and FLUX.1-dev (1024², 28
#                                         steps) and Wan 2.1-1.3B (17 frames of 480×832, 30 steps), n = 1,
#                                         random weights, ≤ 4 minutes each)
#
# peers-sd3 / peers-flux / peers-wan rows: pipe(...) eager, compile_pipeline uncached and L2C (eager step graphs,
# and L2C in one whole-trajectory CUDA graph), cache-dit static (matched to the L2C schedule's removed
# MACs) and dynamic, torch.compile default (skipped when it would not fit the step's deadline), each
# with its peak memory. One set of weights on the GPU (peers.py's docstring: the twins and cache-dit
# share the pipeline's tensors), so FLUX.1-dev's 24 GB fit an 80 GB H100.
#
# Routers: $L2C_ROUTERS_DIR, else .routers/ in the checkout when it exists, else ../shared/data/routers.
# Wheels: when .whl/ exists and diffusers is not importable, its wheels (diffusers, cache-dit and
# their pure-python requirements) are installed into /tmp/site first, offline. Runs from a checkout
# without installing it (PYTHONPATH), with whatever python3 holds torch. On a machine without CUDA
# it says so in one line, lists what it would run, and exits 0.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT [tests,latency,peers-dit,peers-pixart,summary; on request kernels,compiled,peers-sd3,peers-flux,peers-wan]}
steps=${2:-tests,latency,peers-dit,peers-pixart,summary}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .routers ]; then default_routers=.routers; else default_routers=../shared/data/routers; fi
routers=${L2C_ROUTERS_DIR:-$default_routers}
py=${PYTHON:-python3}

gpu_tests=$(grep -l "mark.gpu" tests/*.py | tr '\n' ' ')
lat="$py benchmarks/latency.py --matrix --device cuda --only DiT-XL/2 --samplers ddim-20 --routers-dir $routers --repeats 10 --executor-budget 2"
# peers: compile rows take ~30-60 s each on an H200; every row is bounded by --row-limit and none
# starts when the step's --deadline would cut it (those are written as skipped rows).
peers="$py benchmarks/peers.py --device cuda --dtype bfloat16 --routers-dir $routers --repeats 5 --executor-budget 2 --row-limit 100"
# full-size SD3.5 / FLUX.1: a call is seconds (SD3.5-medium 1024² 28 steps with CFG ≈ 0.6 PFLOP), the
# l2c twins' capture tens of seconds each, torch.compile ~1-2 min: few timed calls, compile row last
big="pipeline-eager,l2c-uncached,l2c-l2c,l2c+graph-l2c,cache-dit-static,cache-dit-dynamic,torch-compile-default"
declare -A limit=([tests]=110 [kernels]=50 [latency]=95 [compiled]=170 [peers-dit]=200 [peers-pixart]=90 [summary]=15
                  [peers-sd3]=240 [peers-flux]=240 [peers-wan]=240)
declare -A cmd=(
  [tests]="$py -m pytest -m gpu -q -p no:cacheprovider $gpu_tests"
  [kernels]="$py benchmarks/kernel_bandwidth.py --dtype bf16 --rep-ms 30 --out $out/kernels-gpu.jsonl"
  [latency]="$lat --dtypes bfloat16,float32 --batches 8,1 --cuda-graph --no-inductor-graph --time-limit 40 --deadline 80 --out $out/latency-gpu.jsonl"
  [compiled]="$lat --dtypes bfloat16 --batches 8 --skip-eager --torch-compile --cuda-graph --time-limit 150 --deadline 150 --out $out/latency-gpu-compiled.jsonl"
  [peers-dit]="$peers --pipeline dit --batches 8,1 --deadline 185 --out $out/peers-dit.jsonl"
  [peers-pixart]="$peers --pipeline pixart --batches 1 --deadline 75 --out $out/peers-pixart.jsonl"
  [peers-sd3]="$peers --pipeline sd3 --batches 1 --executors $big --repeats 2 --executor-budget 4 --row-limit 120 --compile-estimate 100 --deadline 225 --out $out/peers-sd3.jsonl"
  [peers-flux]="$peers --pipeline flux --batches 1 --executors $big --repeats 1 --row-limit 150 --compile-estimate 150 --deadline 225 --out $out/peers-flux.jsonl"
  [peers-wan]="$peers --pipeline wan --batches 1 --executors $big --repeats 1 --row-limit 120 --compile-estimate 100 --deadline 225 --out $out/peers-wan.jsonl"
  [summary]="$py benchmarks/gpu_summary.py $out/latency-gpu.jsonl $out/latency-gpu-compiled.jsonl --peers $out/peers-dit.jsonl $out/peers-pixart.jsonl --kernels $out/kernels-gpu.jsonl --out $out/summary.md"
)

if ! $py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device on this machine; nothing was run. It would run, in $out:"
  for s in ${steps//,/ }; do echo "  [$s, ≤ ${limit[$s]:-?} s] ${cmd[$s]:-unknown step}"; done
  exit 0
fi

mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt" 2>&1
if [ -d .whl ] && ! $py -c "import diffusers" 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$out/wheels.log" 2>&1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
  echo "== wheels: $(ls .whl | tr '\n' ' ')-> /tmp/site ($($py -c "import diffusers, cache_dit; print('diffusers', diffusers.__version__, 'cache-dit', cache_dit.__version__)" 2>&1 | tail -n 1))"
fi
status=0
for s in ${steps//,/ }; do
  if [ -z "${cmd[$s]:-}" ]; then echo "gpu_check: unknown step $s" >&2; exit 2; fi
  t0=$(date +%s)
  echo "== $s (limit ${limit[$s]} s): ${cmd[$s]}"
  timeout --kill-after=5 "${limit[$s]}" ${cmd[$s]} > "$out/$s.log" 2>&1
  rc=$?
  echo "== $s: exit $rc in $(( $(date +%s) - t0 )) s"
  tail -n 15 "$out/$s.log"
  [ "$rc" -ne 0 ] && status=1
done
[ -f "$out/summary.md" ] && cat "$out/summary.md"
exit $status
