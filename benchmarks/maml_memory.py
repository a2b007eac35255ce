"""Peak memory and tasks/s of a meta-gradient as the inner loop grows: second-order MAML with and
without gradient checkpointing through the inner loop, first-order MAML and iMAML (metaphi),
against learn2learn's MAML and a textbook per-task loop, measured in the same run.

    python benchmarks/maml_memory.py [--steps 1 5 10 20] [--l2l-python /work/venvs/l2l/bin/python]

Setting: Conv-4 (64 filters, BatchNorm with batch statistics) on Omniglot-shaped random data,
5-way 1-shot, 15 queries per class, 28x28; a meta-batch of ``--meta-batch`` tasks, one task at
a time (every path frees a task's graph before the next; metaphi with ``task_threads=1``), one
intra-op thread (``--threads``); inner lr 0.1; iMAML with λ = 2 and 5 conjugate-gradient steps
(its inner loop runs the same number of SGD steps as MAML's).

Memory: each configuration runs in a fresh process. After the imports, building the network
and the tasks, and :func:`warm_up` (the kernels for these shapes, the thread pools and the
autograd engine loaded), the high-water mark of the resident set size is reset
(``/proc/self/clear_refs``) and the resident set size taken as the baseline; the table gives
the high-water mark after one warm-up outer step and ``--reps`` timed ones, minus that
baseline: what the meta-gradient itself needs at its peak, one-time costs excluded. This does
not depend on the load of the machine; tasks/s, timed over the ``--reps`` steps, does. The heap
allocator's fragmentation moves that peak by a few MiB from one process to the next, so each
configuration runs in ``--processes`` fresh processes and the table gives the median (and the
range in the notes).

learn2learn 0.2.0 runs in a separate virtual environment (``--l2l-python``; how it was built:
``benchmarks/install_learn2learn.sh``), as ``l2l.algorithms.MAML(model, lr)`` with
``clone()``/``adapt()`` per task and ``backward()`` per task, its documented loop. That
environment has the PyTorch release whose torchvision wheel imports (learn2learn needs
torchvision), which may differ from the project's: the textbook loop is also run there
(``textbook@l2l``) to show that the PyTorch release does not change the memory of the same
computation. Without ``--l2l-python`` (or if learn2learn does not import there) the textbook
loop is the peer.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("maml", "maml-checkpoint", "fomaml", "imaml", "textbook", "learn2learn")
INNER_LR = 0.1
DEFAULT_L2L = "/work/venvs/l2l/bin/python"


def conv4_plain():
    """Conv-4 in plain PyTorch (the architecture of metaphi.models.conv4), BatchNorm with
    batch statistics, for the paths that do not import metaphi."""
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1),
                             nn.BatchNorm2d(o, track_running_stats=False), nn.ReLU(),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(1, 64), block(64, 64), block(64, 64), block(64, 64),
                         nn.Flatten(), nn.Linear(64, 5))


def random_tasks(n: int, n_query: int, seed: int = 0) -> list[tuple]:
    """``n`` 5-way 1-shot tasks of Omniglot's shape with ``n_query`` queries per class."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(5, 1, 28, 28, generator=g), torch.arange(5),
             torch.rand(5 * n_query, 1, 28, 28, generator=g),
             torch.arange(5).repeat_interleave(n_query))
            for _ in range(n)]


def metaphi_step(kind: str, steps: int):
    """(network, outer step) for metaphi's learners: ``meta_backward`` + Adam."""
    import torch

    from metaphi.learners import FOMAML, IMAML, MAML
    from metaphi.models import conv4
    from metaphi.tasks import Task

    net = conv4(5)
    if kind == "imaml":
        learner = IMAML(net, inner_lr=INNER_LR, inner_steps=steps, lam=2.0, cg_steps=5)
    elif kind == "fomaml":
        learner = FOMAML(net, inner_lr=INNER_LR, inner_steps=steps, batched=False)
    else:
        learner = MAML(net, inner_lr=INNER_LR, inner_steps=steps, batched=False,
                       checkpoint=kind == "maml-checkpoint")
    learner.task_threads = 1
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def outer(tasks: list[tuple]) -> None:
        opt.zero_grad()
        learner.meta_backward([Task(*t) for t in tasks])
        opt.step()
    return learner.model, outer


def textbook_step(steps: int):
    """Second-order MAML as a textbook per-task loop (functional_call + autograd.grad)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    net = conv4_plain()
    params = dict(net.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def outer(tasks: list[tuple]) -> None:
        opt.zero_grad()
        for sx, sy, qx, qy in tasks:
            fast = params
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(net, fast, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - INNER_LR * g for (n, p), g in zip(fast.items(), grads)}
            (F.cross_entropy(functional_call(net, fast, (qx,)), qy) / len(tasks)).backward()
        opt.step()
    return net, outer


def l2l_step(steps: int):
    """learn2learn's MAML, as its documentation and examples use it."""
    import learn2learn as l2l
    import torch
    import torch.nn.functional as F

    net = conv4_plain()
    maml = l2l.algorithms.MAML(net, lr=INNER_LR, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)

    def outer(tasks: list[tuple]) -> None:
        opt.zero_grad()
        for sx, sy, qx, qy in tasks:
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(sx), sy))
            (F.cross_entropy(learner(qx), qy) / len(tasks)).backward()
        opt.step()
    return net, outer


def warm_up(net, task: tuple) -> None:
    """Load the kernels for the task's shapes, the thread pools and the autograd engine before
    the baseline: a second-order gradient of the network on the support set and a gradient
    on the query set."""
    import torch
    import torch.nn.functional as F

    params = [p for p in net.parameters() if p.requires_grad]
    loss = F.cross_entropy(net(task[0]), task[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    torch.autograd.grad(sum((g * g).sum() for g in grads), params)
    torch.autograd.grad(F.cross_entropy(net(task[2]), task[3]), params)


def rss_kib() -> tuple[int, int]:
    """(resident set size, its high-water mark) of this process in KiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def reset_peak() -> bool:
    """Reset the high-water mark of the resident set size to the current size (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(kind: str, steps: int, meta_batch: int, reps: int, threads: int,
            n_query: int) -> dict:
    """One configuration, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "learn2learn":
        net, outer = l2l_step(steps)
    elif kind == "textbook":
        net, outer = textbook_step(steps)
    else:
        net, outer = metaphi_step(kind, steps)
    tasks = random_tasks(meta_batch, n_query)
    warm_up(net, tasks[0])
    gc.collect()
    if reset_peak():  # the baseline: the resident set now, the warm-up's peak forgotten
        base = rss_kib()[0]
    else:  # no clear_refs: the peak so far (the warm-up's included)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outer(tasks)  # warm-up step, in the peak too
    t0 = time.perf_counter()
    for _ in range(reps):
        outer(tasks)
    seconds = time.perf_counter() - t0
    peak = max(rss_kib()[1], base) if Path("/proc/self/status").exists() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"baseline_mib": base / 1024, "peak_mib": peak / 1024,
            "peak_over_baseline_mib": (peak - base) / 1024,
            "tasks_per_s": reps * meta_batch / seconds, "torch": torch.__version__}


def run_one(python: str, kind: str, steps: int, args: argparse.Namespace) -> dict:
    spec = json.dumps({"kind": kind, "steps": steps, "meta_batch": args.meta_batch,
                       "reps": args.reps, "threads": args.threads, "n_query": args.n_query})
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--one", spec],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """One configuration's runs in fresh processes as one row: the median peak and tasks/s,
    the range of the peaks (the first error if any run failed)."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    peaks = sorted(r["peak_over_baseline_mib"] for r in runs)
    return {**runs[0], "peak_over_baseline_mib": statistics.median(peaks),
            "peak_range_mib": [peaks[0], peaks[-1]],
            "baseline_mib": statistics.median(r["baseline_mib"] for r in runs),
            "tasks_per_s": statistics.median(r["tasks_per_s"] for r in runs)}


def l2l_available(python: str | None) -> str | None:
    """The learn2learn version importable by ``python`` (None if it is not)."""
    if not python or not Path(python).exists():
        return None
    proc = subprocess.run([python, "-c", "import learn2learn; print(learn2learn.__version__)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--meta-batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--processes", type=int, default=5,
                    help="fresh processes per configuration; the table gives their median")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-query", type=int, default=1,
                    help="queries per class (1: MAML's, MAML++'s and learn2learn's Omniglot "
                         "meta-training)")
    ap.add_argument("--l2l-python", default=os.environ.get("METAPHI_L2L_PYTHON", DEFAULT_L2L),
                    help="python of the virtual environment with learn2learn")
    ap.add_argument("--name", default="maml_memory", help="results/NAME.json")
    ap.add_argument("--alone", action="store_true",
                    help="say in the notes that nothing else ran on the machine")
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["kind"], spec["steps"], spec["meta_batch"], spec["reps"],
                                 spec["threads"], spec["n_query"])))
        return

    t_start = time.perf_counter()
    l2l_version = l2l_available(args.l2l_python)
    peer = "learn2learn" if l2l_version else "textbook"
    runs: list[tuple[str, str, str]] = [(k, sys.executable, k) for k in KINDS[:5]]
    if l2l_version:
        runs += [("learn2learn", args.l2l_python, "learn2learn"),
                 ("textbook", args.l2l_python, "textbook@l2l")]
    results: dict[tuple[str, int], dict] = {}
    for steps in args.steps:
        for kind, python, label in runs:
            r = median_run([run_one(python, kind, steps, args)
                            for _ in range(args.processes)])
            results[(label, steps)] = r
            print(f"{label:>16} K={steps:>2}: " + (
                r.get("error") or f"{r['peak_over_baseline_mib']:8.1f} MiB over baseline, "
                f"{r['tasks_per_s']:6.2f} tasks/s (torch {r['torch']})"), flush=True)

    rows = []
    for steps in args.steps:
        ref = results[(peer, steps)].get("peak_over_baseline_mib")
        for _, _, label in runs:
            r = results[(label, steps)]
            if "error" in r:
                rows.append([label, steps, None, None, None, None, None, r["error"]])
                continue
            m = r["peak_over_baseline_mib"]
            lo, hi = r.get("peak_range_mib", (m, m))
            rows.append([label, steps, round(m, 1), f"{lo:.1f}-{hi:.1f}",
                         round(r["baseline_mib"], 1),
                         round(m / ref, 3) if ref else None, round(r["tasks_per_s"], 2),
                         r["torch"]])
    target = {}
    if 10 in args.steps:
        for label in ("imaml", "maml-checkpoint"):
            r, ref = results[(label, 10)], results[(peer, 10)]
            if "error" not in r and "error" not in ref:
                target[label] = round(r["peak_over_baseline_mib"] / ref["peak_over_baseline_mib"], 3)
    shared = ("Measured alone on the machine" if args.alone else
              "The tasks/s column was measured on a shared machine (other sessions' jobs ran "
              "beside it), so it is indicative only; the memory columns do not depend on load")
    notes = (
        f"Peer: {'learn2learn ' + l2l_version + ' (its own venv: benchmarks/install_learn2learn.sh)' if l2l_version else 'textbook per-task second-order loop (learn2learn not importable)'}. "
        "Memory: the high-water mark of the resident set size, reset after imports, model, "
        "data and a warm-up that loads the kernels, minus the resident set size then; each "
        f"configuration in {args.processes} fresh processes, their median (module docstring). "
        f"At 10 inner steps, peak memory relative to the peer: {target or 'not measured'} "
        "(target <= 0.3). " + shared + ".")
    queries = f"{args.n_query} quer{'y' if args.n_query == 1 else 'ies'} per class"
    table = {"title": "Peak memory of one outer step above the process baseline (MiB), by inner "
                      f"steps; Conv-4 64, 5-way 1-shot, {queries}, meta-batch "
                      f"{args.meta_batch} one task at a time, {args.threads} thread(s)",
             "columns": ["path", "inner steps", "peak over baseline MiB (median)",
                         f"range over {args.processes} processes", "baseline MiB",
                         f"x {peer}", "tasks/s", "torch"],
             "rows": rows, "notes": notes}
    sys.path.insert(0, str(HERE))
    from common import write_result

    title = "Peak memory of MAML's meta-gradient: checkpointing, iMAML, learn2learn"
    path = write_result(
        args.name, title + ("" if args.n_query == 1 else f" ({queries})"),
        [table], time.perf_counter() - t_start, notes, topic="throughput",
        question="How much memory does a meta-gradient take as the inner loop grows, and do "
                 "inner-loop checkpointing and iMAML bring it to 0.3x learn2learn's MAML at "
                 "10 inner steps?",
        target_at_10_steps=target, peer=peer, l2l_python=args.l2l_python if l2l_version else None)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
