#!/usr/bin/env bash
# The accelerator checks as ONE short prepared script, for a session that is lent a GPU through
# the `device` tool (15 minutes of device time in all, machine start included). Prepare here
# first (bash benchmarks/gpu/prepare.sh), then:
#   run(command="bash benchmarks/gpu/session.sh", carry=[".whl", ".data"], timeout_s=600)
# The script aims to end within TOTAL_SECONDS (default 570): the Omniglot MAML 5w1s run gets the
# steps that fit the time left after the first two checks, at the speed step 2 measured for its
# path (MAML_STEPS overrides). Everything it measures comes back in $OUT.
# A dry run on a CPU machine checks the script itself (small, no wheels):
#   DEVICE=cpu SKIP_WHEELS=1 LEARNERS=protonet REPS=1 MAML_STEPS=2 MAML_WORK=/tmp/metaphi_dry \
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

# SKIP_CHECKS=1 leaves out steps 1 and 2 (done in an earlier session) for the training run.
if [ -z "${SKIP_CHECKS:-}" ]; then
stamp "1. meta-gradients vs float64 references on the GPU"
METAPHI_TEST_DEVICE=$DEVICE timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_meta_gradients.py \
  2>&1 | tail -n 15 | tee "$OUT/tests_cuda.txt"

stamp "2. meta-training throughput on the GPU"
# shellcheck disable=SC2086  # LEARNERS is a list
timeout 210 python3 benchmarks/throughput.py --device "$DEVICE" --reps "${REPS:-3}" \
  --learners ${LEARNERS:-maml fomaml anil protonet} --paths loop plain batched 2>&1 \
  | tee "$OUT/throughput.log" | tail -n 25
fi

stamp "2b. a real run's step time: meta-train tasks sampled in the loop vs in worker processes"
timeout 120 python3 benchmarks/loader_workers.py --device "$DEVICE" --steps "${AB_STEPS:-150}" \
  --workers 0 1 2 2>&1 | tail -n 4

# MAML_WORK: a run folder to train on from its checkpoint, so budget runs add up over device
# calls and sessions. prepare.sh copies benchmarks/_work/omniglot_gpu (the run so far) into
# .gpu_run, which is then the default; carry it. MAML_STEPS is the new total.
if [ -z "${MAML_WORK:-}" ] && [ -f .gpu_run/omniglot-maml-5w1s/checkpoint.pt ]; then MAML_WORK=.gpu_run; fi
WORK=${MAML_WORK:-/tmp/metaphi_gpu_runs}

# Steps that fit, in whole validation intervals, on top of those already done (at most the
# preset's 30000): 80% of the time left (less 100 s for start-up and the meta-test) at the step
# time measured in 2b with one loader worker (42 ms on the H200, validation included: 8000
# steps took 335 s), else at the throughput benchmark's speed plus 85% (what sampling in the
# loop cost before loader workers: 72 ms against 39), else 1000 steps.
left=$(( ${TOTAL_SECONDS:-570} - ($(date +%s) - t0) - 100 ))
if [ -z "${MAML_STEPS:-}" ]; then
  MAML_STEPS=$(python3 -c "
import json
done = 0
try:
    done = json.loads(open('$WORK/omniglot-maml-5w1s/metrics.jsonl').read().splitlines()[-1])['step'] + 1
except Exception:
    pass
try:
    step_s = json.load(open('$OUT/loader_workers_cuda.json'))['raw']['1']['median_s']
except Exception:
    try:
        step_s = 1.85 * 32 / json.load(open('$OUT/throughput_cuda.json'))['raw']['maml/1/batched']['tasks_per_s']
    except Exception:
        step_s = None
more = 1000 if step_s is None else int(0.8 * $left / step_s) // 250 * 250
print(min(30000, done + max(250, more)))")
fi
stamp "3. Omniglot MAML 5w1s, $MAML_STEPS steps (${left} s left for it)"
timeout "$(( left > 60 ? left + 45 : 105 ))" python3 benchmarks/omniglot.py --name omniglot_gpu \
  --presets omniglot-maml-5w1s --steps "omniglot-maml-5w1s=$MAML_STEPS" \
  --work "$WORK" --overrides omniglot-maml-5w1s:val_every=250 \
  omniglot-maml-5w1s:checkpoint_every=250 ${MAML_OVERRIDES:-} 2>&1 | tail -n 5
# The whole run folder (config, metrics, checkpoint, curve) comes back, so a run that the time
# limit stopped before its meta-test can be finished here (benchmarks/omniglot.py --trained-on).
tar czf "$OUT/omniglot-maml-5w1s-run.tgz" -C "$WORK" omniglot-maml-5w1s 2>/dev/null
stamp "done; back in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
