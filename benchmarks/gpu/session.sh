#!/usr/bin/env bash
# The accelerator checks as ONE short prepared script, for a session that is lent a GPU through
# the `device` tool (15 minutes of device time in all, machine start included). Prepare here
# first (bash benchmarks/gpu/prepare.sh), then:
#   run(command="bash benchmarks/gpu/session.sh", carry=[".whl", ".data"], timeout_s=560)
# MAML_STEPS (default 1500) caps the Omniglot MAML 5w1s run; pick it from the throughput numbers
# of an earlier try (steps/s = batched tasks/s / 32). Everything it measures comes back in $OUT.
# A dry run on a CPU machine checks the script itself (small, no wheels):
#   DEVICE=cpu SKIP_WHEELS=1 LEARNERS=protonet REPS=1 MAML_STEPS=2 \
#     MAML_OVERRIDES="omniglot-maml-5w1s:test_tasks=20 omniglot-maml-5w1s:val_tasks=10" \
#     METAPHI_DATA=../shared/data bash benchmarks/gpu/session.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/metaphi_gpu_out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: run benchmarks/gpu/prepare.sh here and carry .whl"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export METAPHI_DATA=${METAPHI_DATA:-$PWD/.data} METAPHI_BENCH_RESULTS=$OUT  # results JSON -> $OUT
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  | tee "$OUT/device.txt"

stamp "1. meta-gradients vs float64 references on the GPU"
METAPHI_TEST_DEVICE=$DEVICE timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_meta_gradients.py \
  2>&1 | tail -n 15 | tee "$OUT/tests_cuda.txt"

stamp "2. meta-training throughput on the GPU"
# shellcheck disable=SC2086  # LEARNERS is a list
timeout 240 python3 benchmarks/throughput.py --device "$DEVICE" --reps "${REPS:-5}" \
  --learners ${LEARNERS:-maml fomaml anil protonet} --paths loop plain batched 2>&1 | tail -n 25

stamp "3. Omniglot MAML 5w1s, ${MAML_STEPS:-1500} steps"
timeout "${MAML_SECONDS:-300}" python3 benchmarks/omniglot.py --name omniglot_gpu \
  --presets omniglot-maml-5w1s --steps "omniglot-maml-5w1s=${MAML_STEPS:-1500}" \
  --work /tmp/metaphi_gpu_runs --overrides omniglot-maml-5w1s:val_every=250 \
  omniglot-maml-5w1s:checkpoint_every=250 ${MAML_OVERRIDES:-} 2>&1 | tail -n 5
run=/tmp/metaphi_gpu_runs/omniglot-maml-5w1s
cp "$run/metrics.jsonl" "$OUT/maml_5w1s_metrics.jsonl" 2>/dev/null
cp "$run/learning_curve.png" "$OUT/omniglot-maml-5w1s-learning_curve.png" 2>/dev/null
stamp "done; back in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
