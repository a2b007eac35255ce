"""Figure of ES searches against gradient MAML on sinusoid regression, from the results JSONs
that ``benchmarks/es_sinusoid.py`` writes.

Left: each search's population-mean fitness per generation (a rolling median: a generation
whose candidates include a diverging one has a mean in the billions; it includes the
candidates' sampling spread, so it lies above the search mean's own loss), with the meta-test
MSE of the deployed φ and of gradient MAML as horizontal lines; a search restarted from earlier
ones (``--restart-from``) is drawn after their generations. Right: gradient MAML's meta-train
query loss against wall time.

    python benchmarks/plot_es.py es_sinusoid_sepcma_50k_more_tasks es_sinusoid_sepcma_80k
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from metaphi.plots.curves import moving_average, save_figure

HERE = Path(__file__).resolve().parent


def plot_es(names: list[str], out: Path, window: int = 250) -> Path:
    """Plot the named results (file stems under benchmarks/results) into ``out``."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(names):
        rec = json.loads((HERE / "results" / f"{name}.json").read_text())
        es, maml, c = rec["es"], rec["maml"], f"C{i}"
        g, f = np.array(es["curve"], dtype=float).T
        # a restart continues the searches it restarted: place it after their generations
        g = g + ((es.get("restart_of") or {}).get("generations") or 0)
        sm = np.median(np.lib.stride_tricks.sliding_window_view(f, min(window, len(f))), axis=1)
        a1.plot(g[len(g) - len(sm):], sm, color=c, label=f"{name}: population mean")
        a1.axhline(es["mse"], color=c, ls="--", lw=1,
                   label=f"ES deployed φ, meta-test {es['mse']:.3f}")
        a1.axhline(maml["mse"], color=c, ls=":", lw=1.5,
                   label=f"gradient MAML, meta-test {maml['mse']:.3f}")
        _, secs, loss = np.array(maml["curve"], dtype=float).T
        sl = moving_average(loss, 20)
        a2.plot(secs[len(secs) - len(sl):], sl, color=c, label=f"{name}: {maml['steps']} steps")
    a1.set_xlabel("generation")
    a1.set_ylabel("MSE (fitness tasks / meta-test tasks)")
    a1.set_ylim(top=min(a1.get_ylim()[1], 0.8))
    a1.set_title("ES search (sinusoid 10-shot)")
    a2.set_xlabel("wall seconds")
    a2.set_ylabel("meta-train query MSE (mean of 20 logged steps)")
    a2.set_title("gradient MAML, second order")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return save_figure(fig, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="results file stems, e.g. es_sinusoid_sepcma_80k")
    ap.add_argument("--out", default=str(HERE / "figures" / "es_sinusoid-search.png"))
    args = ap.parse_args()
    print(plot_es(args.names, Path(args.out)))


if __name__ == "__main__":
    main()
