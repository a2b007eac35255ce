#!/usr/bin/env bash
# The accelerator checks as ONE short prepared script, for a session that is lent a GPU through
# the `device` tool (15 minutes of device time in all, machine start included). Prepare here
# first (bash benchmarks/gpu/prepare.sh), then:
#   run(command="bash benchmarks/gpu/session.sh", carry=[".whl", ".data", ".gpu_run"], timeout_s=600)
# The script aims to end within TOTAL_SECONDS (default 570): the Omniglot MAML run (MAML_PRESET,
# default 5w5s) gets the steps that fit the time left after the first checks, at its measured
# step time (MAML_STEPS overrides). Everything it measures comes back in $OUT.
# A dry run on a CPU machine checks the script itself (small, no wheels):
#   DEVICE=cpu SKIP_WHEELS=1 LEARNERS=protonet REPS=1 MAML_STEPS=2 MAML_WORK=/tmp/metaphi_dry \
#     MAML_OVERRIDES="omniglot-maml-5w5s:test_tasks=20 omniglot-maml-5w5s:val_tasks=10" \
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

# SKIP_AB=1 leaves out step 2b too (measured in an earlier session: 42 ms a step with 1 worker).
if [ -z "${SKIP_AB:-}" ]; then
stamp "2b. a real run's step time: meta-train tasks sampled in the loop vs in worker processes"
timeout 120 python3 benchmarks/loader_workers.py --device "$DEVICE" --steps "${AB_STEPS:-150}" \
  --workers 0 1 2 2>&1 | tail -n 4
fi

# MAML_PRESET: the Omniglot MAML preset to train (5w1s is finished: 30000 steps, 2026-11-28).
# MAML_WORK: a run folder to train on from its checkpoint, so budget runs add up over device
# calls and sessions. prepare.sh copies benchmarks/_work/omniglot_gpu (the runs so far) into
# .gpu_run, which is then the default; carry it. MAML_STEPS is the new total.
PRESET=${MAML_PRESET:-omniglot-maml-5w5s}
SETTING=${PRESET##*-}
NAME=omniglot_gpu; [ "$SETTING" = 5w1s ] || NAME=omniglot_gpu_$SETTING  # results/NAME.json
if [ -z "${MAML_WORK:-}" ] && [ -d .gpu_run ]; then MAML_WORK=.gpu_run; fi
WORK=${MAML_WORK:-/tmp/metaphi_gpu_runs}

# Steps that fit, in whole validation intervals, on top of those already done (at most the
# preset's full schedule): 80% of the time left (less 100 s for start-up and the meta-test) at
# the step time measured on the H200 with one loader worker, validation included (5w1s 42 ms:
# 11500 steps took 487 s; 5w5s 55 ms: 4034 steps in 222 s), else 2b's measurement scaled by
# the images a task holds (5w1s: 80), else 1000 steps. STEP_S overrides the step time.
left=$(( ${TOTAL_SECONDS:-570} - ($(date +%s) - t0) - 100 ))
if [ -z "${MAML_STEPS:-}" ]; then
  MAML_STEPS=$(python3 -c "
import json, os
from metaphi.runs import get_preset
p = get_preset('$PRESET')
done = 0
try:
    done = json.loads(open('$WORK/$PRESET/metrics.jsonl').read().splitlines()[-1])['step'] + 1
except Exception:
    pass
t = p['task']
step_s = float(os.environ.get('STEP_S', 0)) or {'5w1s': 0.042, '5w5s': 0.055}.get('$SETTING')
if step_s is None:
    try:
        images = t['n_way'] * (t['k_shot'] + t['q_queries'])
        step_s = json.load(open('$OUT/loader_workers_cuda.json'))['raw']['1']['median_s'] * images / 80
    except Exception:
        step_s = None
more = 1000 if step_s is None else int(0.8 * $left / step_s) // 250 * 250
print(min(p['steps'], done + max(250, more)))")
fi
stamp "3. Omniglot $PRESET, $MAML_STEPS steps (${left} s left for it)"
# MAML_TIMEOUT (seconds) overrides the limit on the run; the run folder is packed after it.
timeout "${MAML_TIMEOUT:-$(( left > 60 ? left + 45 : 105 ))}" python3 benchmarks/omniglot.py --name "$NAME" \
  --presets "$PRESET" --steps "$PRESET=$MAML_STEPS" \
  --work "$WORK" --overrides "$PRESET:val_every=250" \
  "$PRESET:checkpoint_every=250" ${MAML_OVERRIDES:-} 2>&1 | tail -n 5
# The whole run folder (config, metrics, checkpoint, curve) comes back, so a run that the time
# limit stopped before its meta-test can be finished here (benchmarks/omniglot.py --trained-on).
tar czf "$OUT/$PRESET-run.tgz" -C "$WORK" "$PRESET" 2>/dev/null
stamp "done; back in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
