"""Meta-training throughput (tasks/s), peak memory and achieved FLOP/s of every learner on
Omniglot-shaped random data: Conv-4 (64 filters), 1x28x28, 5-way 1-shot, 15 queries per class,
meta-batch 32, 1 and 5 inner steps; beside this machine's measured fp32 matmul and
convolution peaks from the same run.

    python benchmarks/throughput.py [--reps 3] [--threads 2]
    python benchmarks/throughput.py --device cuda --reps 5    # on a GPU: results/throughput_cuda.json

Each configuration runs in its own process (clean peak-RSS numbers); on a GPU they run in one
process, with the peak-memory counter reset between them. Paths:

* "loop": metaphi's per-task loop, one task at a time (functional_call + autograd.grad per task,
  what learn2learn/higher do), ``task_threads=1``;
* "plain": the same loop written out here in 20 lines without metaphi (second-order MAML only),
  a check that metaphi's loop is no slower than the textbook one;
* "threads": the per-task loop with the meta-batch's tasks on ``--threads`` threads side by side,
  each with one intra-op thread (metaphi's CPU default, :mod:`metaphi.learners.parallel`);
* "batched": metaphi's task-batched path.

All paths give the same meta-gradient (checked in the tests). With ``--device cuda`` the
"threads" path is left out (task threads are for CPUs), timings synchronise the GPU, peak
memory is ``torch.cuda.max_memory_allocated`` and the peaks are the GPU's (fp32 matmul with
PyTorch's default TF32 setting, and the 64-channel convolution through cuDNN).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PATHS = ("loop", "plain", "threads", "batched")
GRADIENT = ("maml", "fomaml", "metasgd", "anil", "reptile")
METRIC = ("protonet", "matchingnet", "r2d2")


def build(learner: str, steps: int, batched: bool, task_threads: int | None = 1):
    import metaphi.learners as L
    from metaphi.models import conv4, conv4_features

    if learner in GRADIENT:
        cls = {"maml": L.MAML, "fomaml": L.FOMAML, "metasgd": L.MetaSGD, "anil": L.ANIL,
               "reptile": L.Reptile}[learner]
        lrn = cls(conv4(5), inner_lr=0.4 if learner != "reptile" else 0.01, inner_steps=steps,
                  batched=batched)
    else:
        cls = {"protonet": L.ProtoNet, "matchingnet": L.MatchingNet, "r2d2": L.R2D2}[learner]
        lrn = cls(conv4_features(), batched=batched)
    lrn.task_threads = task_threads
    return lrn


class PlainMAML:
    """Second-order MAML as a textbook per-task loop, independent of metaphi."""

    def __init__(self, steps: int) -> None:
        import torch
        from torch import nn

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.MaxPool2d(2))
        self.net = nn.Sequential(block(1, 64), block(64, 64), block(64, 64), block(64, 64),
                                 nn.Flatten(), nn.Linear(64, 5))
        self.params = dict(self.net.named_parameters())
        self.steps, self.torch = steps, torch

    def to(self, *args, **kwargs):
        self.net = self.net.to(*args, **kwargs)
        self.params = dict(self.net.named_parameters())
        return self

    def meta_grads(self, tasks):
        """The meta-gradient of the mean query loss (as a list, in parameter order)."""
        import torch.nn.functional as F
        from torch.func import functional_call

        names = list(self.params)
        total = [self.torch.zeros_like(p) for p in self.params.values()]
        for t in tasks:
            fast = self.params
            for _ in range(self.steps):
                loss = F.cross_entropy(functional_call(self.net, fast, (t.support_x,)), t.support_y)
                grads = self.torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: fast[n] - 0.4 * g for n, g in zip(names, grads)}
            loss = F.cross_entropy(functional_call(self.net, fast, (t.query_x,)), t.query_y)
            for acc, g in zip(total, self.torch.autograd.grad(loss / len(tasks),
                                                              list(self.params.values()))):
                acc += g
        return total


def random_tasks(n: int, seed: int = 0):
    import torch

    from metaphi.tasks import Task

    g = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(5, 1, 28, 28, generator=g), torch.arange(5),
                 torch.rand(75, 1, 28, 28, generator=g), torch.arange(5).repeat_interleave(15))
            for _ in range(n)]


def to_channels_last(lrn, tasks):
    """The learner (returned) and the tasks (in place) in channels_last layout."""
    import torch

    for t in tasks:
        t.support_x = t.support_x.contiguous(memory_format=torch.channels_last)
        t.query_x = t.query_x.contiguous(memory_format=torch.channels_last)
    return lrn.to(memory_format=torch.channels_last)


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    import torch

    if _is_gpu(device):
        torch.cuda.synchronize()


def one(learner: str, steps: int, path: str, reps: int, meta_batch: int,
        channels_last: bool, device: str = "cpu") -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    if path == "plain":
        lrn = PlainMAML(steps)
    else:
        lrn = build(learner, steps, path == "batched", None if path == "threads" else 1)
    tasks = [t.to(device) for t in random_tasks(meta_batch)]
    lrn = lrn.to(device)
    if channels_last:
        lrn = to_channels_last(lrn, tasks)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lrn.meta_grads(tasks)  # warm-up
    with FlopCounterMode(display=False) as fc:
        lrn.meta_grads(tasks)
    flops = fc.get_total_flops()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        lrn.meta_grads(tasks)
    _sync(device)
    dt = (time.perf_counter() - t0) / reps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"tasks_per_s": meta_batch / dt, "seconds_per_step": dt, "gflop_per_step": flops / 1e9,
           "gflops": flops / dt / 1e9, "peak_rss_gib": peak / 2**20,
           "peak_rss_over_setup_gib": (peak - base_rss) / 2**20}
    if _is_gpu(device):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def one_on_gpu(learner: str, steps: int, path: str, reps: int, meta_batch: int,
               channels_last: bool, device: str) -> dict:
    """:func:`one` in this process: on a GPU the peak memory is reset per configuration
    (``torch.cuda.reset_peak_memory_stats``), so a fresh process per configuration (which a
    clean peak RSS needs on the CPU) would only add a CUDA start-up each time."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        return one(learner, steps, path, reps, meta_batch, channels_last, device)
    except Exception as e:  # an out-of-memory path is a row of the table, not the end of the run
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}


def _rate(fn, flop: float, device: str, reps: int = 5) -> float:
    """GFLOP/s of ``fn`` (``flop`` per call), after one warm-up call."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return reps * flop / (time.perf_counter() - t0) / 1e9


def peaks(threads: int, device: str = "cpu") -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    n, batch = (8192, 160 * 32) if _is_gpu(device) else (2048, 160)  # big enough to saturate
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    mm = _rate(lambda: a @ b, 2 * n**3, device)
    x = torch.randn(batch, 64, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    conv = _rate(lambda: F.conv2d(x, w, padding=1), 2 * batch * 64 * 64 * 9 * 28 * 28, device)
    return {"matmul_fp32_gflops": mm, "conv3x3_64ch_channels_last_gflops": conv,
            "matmul_n": n, "conv_batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--learners", nargs="+", default=list(GRADIENT + METRIC))
    ap.add_argument("--table-only", action="store_true",
                    help="rebuild the table from benchmarks/results/throughput.json's raw numbers")
    ap.add_argument("--one", nargs=4, metavar=("LEARNER", "STEPS", "PATH", "CHANNELS_LAST"))
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (writes throughput_cuda.json)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    gpu = _is_gpu(args.device)
    if gpu and not torch.cuda.is_available():
        ap.error("--device cuda: PyTorch sees no CUDA GPU here")
    if args.one:
        l, s, b, cl = args.one
        print(json.dumps(one(l, int(s), b, args.reps, args.meta_batch, cl == "1", args.device)))
        return
    if gpu:
        if args.table_only:
            ap.error("--table-only rebuilds the CPU table; run the GPU benchmark again instead")
        args.paths = [p for p in args.paths if p != "threads"]
    from common import RESULTS_DIR, write_result

    t_start = time.perf_counter()
    stored = json.loads((RESULTS_DIR / "throughput.json").read_text()) if args.table_only else None
    machine_peaks = stored["peaks"] if stored else peaks(args.threads, args.device)
    print(machine_peaks, flush=True)
    rows, raw = [], dict(stored["raw"]) if stored else {}
    if stored:  # the settings of the run that measured the stored numbers
        cmd = stored["command"].split()
        args.reps = int(cmd[cmd.index("--reps") + 1]) if "--reps" in cmd else 3
        args.threads = int(cmd[cmd.index("--threads") + 1]) if "--threads" in cmd else 2
    configs = []
    for learner in args.learners:
        for steps in ((1, 5) if learner in GRADIENT else (0,)):
            for path in args.paths:
                if path != "plain" or learner == "maml":
                    configs.append((learner, steps, path, False))
    if "maml" in args.learners and not stored:  # channels_last effect
        configs += [("maml", 1, p, True) for p in args.paths if p != "plain"]
    if stored:
        configs = [(k.split("/")[0], int(k.split("/")[1]), k.split("/")[2], k.endswith("channels_last"))
                   for k in raw]
    for learner, steps, path, cl in configs:
        if stored:
            break
        if gpu:
            r = one_on_gpu(learner, steps, path, args.reps, args.meta_batch, cl, args.device)
        else:
            cmd = [sys.executable, __file__, "--one", learner, str(steps), path,
                   "1" if cl else "0", "--reps", str(args.reps), "--threads", str(args.threads),
                   "--meta-batch", str(args.meta_batch), "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if out.returncode != 0:
                r = {"error": out.stderr.strip().splitlines()[-1]}
            else:
                r = json.loads(out.stdout.strip().splitlines()[-1])
        key = f"{learner}/{steps}/{path}{'/channels_last' if cl else ''}"
        raw[key] = r
        print(key, r, flush=True)
    for (learner, steps, path, cl) in configs:
        key = f"{learner}/{steps}/{path}{'/channels_last' if cl else ''}"
        r = raw[key]
        loop_key = f"{learner}/{steps}/loop"
        if "error" in r:
            rows.append([learner, steps or "–", key.split("/", 2)[2], "error: " + r["error"][:60],
                         "", "", "", ""])
            continue
        loop = raw.get(loop_key, {})
        speedup = r["tasks_per_s"] / loop["tasks_per_s"] if "tasks_per_s" in loop else 1.0
        # torch's FlopCounterMode over-counts the backward of grouped convolutions (checked:
        # 3.3x for 8 groups), so every path is credited with the per-task loop's count of the
        # same meta-gradient's arithmetic.
        gflop = loop.get("gflop_per_step", r["gflop_per_step"])
        rows.append([learner, steps or "–", key.split("/", 2)[2], round(r["tasks_per_s"], 2),
                     round(speedup, 2), round(gflop / r["seconds_per_step"], 1), round(gflop, 1),
                     round(r["peak_gpu_gib" if gpu else "peak_rss_gib"], 2)])
    where = (f"GPU {torch.cuda.get_device_name(0)}" if gpu else f"{args.threads} CPU threads")
    vs_plain = ""
    for k in (1, 5):
        plain, batched = raw.get(f"maml/{k}/plain", {}), raw.get(f"maml/{k}/batched", {})
        if gpu and "tasks_per_s" in plain and "tasks_per_s" in batched:
            vs_plain += (f" Second-order MAML, {k} inner step(s): batched / plain = "
                         f"{batched['tasks_per_s'] / plain['tasks_per_s']:.2f}x.")
    write_result(
        "throughput_cuda" if gpu else "throughput",
        "Meta-training throughput on Omniglot-shaped data (Conv-4, 5-way 1-shot)"
        + (", GPU" if gpu else ""),
        [{"title": f"Conv-4 64 filters, 1x28x28, 5-way 1-shot, 15 queries/class, meta-batch "
                   f"{args.meta_batch}, {where}; mean of {args.reps} outer "
                   "steps after a warm-up",
          "columns": ["learner", "inner steps", "path", "tasks/s", "x loop", "achieved GFLOP/s",
                      "GFLOP per outer step", "peak GPU memory GiB" if gpu else "peak RSS GiB"],
          "rows": rows,
          "notes": f"Machine peaks measured in the same run: fp32 matmul "
                   f"{machine_peaks.get('matmul_n', 2048)}^3 "
                   f"{machine_peaks['matmul_fp32_gflops']:.0f} GFLOP/s; 64-channel 3x3 "
                   f"convolution (batch {machine_peaks.get('conv_batch', 160)}, 28x28, "
                   "channels_last) "
                   f"{machine_peaks['conv3x3_64ch_channels_last_gflops']:.0f} GFLOP/s. "
                   "FLOPs counted with torch.utils.flop_counter on the per-task loop (forward, "
                   "backward and double-backward matmuls/convolutions) and credited to every path "
                   "of the same learner, because the counter over-counts grouped-convolution "
                   "backward passes. 'loop' = metaphi's per-task loop, one task at a time "
                   "(functional_call + autograd.grad per task); 'plain' = the same loop written "
                   "without metaphi in the benchmark; "
                   + ("" if gpu else "'threads' = the per-task loop with "
                      f"the tasks on {args.threads} threads side by side, one intra-op thread "
                      "each (metaphi's CPU default); ")
                   + "'batched' = metaphi's task-batched path; rows "
                   "marked channels_last run model and data in channels_last layout."
                   + (" On the GPU, PyTorch's defaults run cuDNN convolutions in TF32 and "
                      "matmuls in full fp32, hence a convolution peak above the matmul peak."
                      if gpu else "") + vs_plain}],
        stored["wall_seconds"] if stored else time.perf_counter() - t_start, peaks=machine_peaks,
        raw=raw, topic="throughput",
        **({"command": stored["command"], "machine": stored["machine"], "date": stored["date"],
            "table_rebuilt_by": "python benchmarks/throughput.py --table-only"} if stored else {}))


if __name__ == "__main__":
    main()
