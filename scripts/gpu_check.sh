#!/usr/bin/env bash
# CUDA check: run on a machine with a GPU and PyTorch installed, from the repository root. The few
# other dependencies may sit as wheels in .whl/ (installed into /tmp/site). Writes its logs, the
# benchmark's JSON and a demo run's figures under ${OUT:-/tmp/gpu_check}:
#   1. benchmarks/bench_cuda.py: every NTK method, the products, eigenpairs, critical rate and AGOP
#      on the GPU against float64 references; timings of the NTK engine on the GPU;
#   2. the CLI on the GPU: `catapults run --device auto` (the run records cuda), a run stopped by
#      SIGTERM and `catapults resume`d to the end, `reproduce architectures --size tiny`;
#   3. the test suite (which pins the CPU) under this machine's PyTorch, in parallel.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl 2>&1 | tail -2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
CLI="python3 -m catapults.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== 1. bench_cuda"
timeout 240 python3 benchmarks/bench_cuda.py --repeats 3 --json "$OUT/bench_cuda.json" 2>&1 \
  | tee "$OUT/bench_cuda.log"
echo "bench_cuda rc ${PIPESTATUS[0]}"
echo "== 2. CLI on the GPU"
R=/tmp/gpu_runs; rm -rf $R
t=$(date +%s)
$CLI run examples/demo-multi-catapult.yaml --device auto --out $R/demo --no-progress 2>&1 | tail -3
echo "demo rc ${PIPESTATUS[0]} in $(( $(date +%s) - t )) s"
grep -o '"device": *"[a-z0-9:]*"' $R/demo/summary.json
cp $R/demo/figures/*.png "$OUT/" 2>/dev/null
$CLI run examples/demo-multi-catapult.yaml --device cuda --out $R/killed --no-progress \
  --set output.checkpoint_every=20 --set train.steps=2000 > $R/killed.log 2>&1 &
pid=$!
for i in $(seq 120); do [ -f $R/killed/checkpoint.pt ] && break; sleep 0.5; done
sleep 2; kill -TERM $pid; wait $pid; echo "terminated rc $?"
grep -o '"status": *"[a-z]*"' $R/killed/summary.json
$CLI resume $R/killed --no-progress 2>&1 | tail -2; echo "resume rc ${PIPESTATUS[0]}"
grep -o '"status": *"[a-z]*"\|"resumed_from[^,]*' $R/killed/summary.json
t=$(date +%s)
$CLI reproduce architectures --size tiny --out $R/arch 2>&1 | tail -4
echo "reproduce architectures tiny rc ${PIPESTATUS[0]} in $(( $(date +%s) - t )) s"
echo "== 3. test suite (CPU-pinned) under $(python3 -c 'import torch; print(torch.__version__)')"
timeout 150 python3 -m pytest -q -p no:cacheprovider -n 14 tests 2>&1 | tail -25 | tee "$OUT/pytest.log"
