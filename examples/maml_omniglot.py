"""MAML on Omniglot, written out with metaphi's public API.

    python examples/maml_omniglot.py --data-dir /path/to/omniglot             # official zips
    python examples/maml_omniglot.py --data-dir /path/to/omniglot --download  # fetch first

The run `metaphi train omniglot-maml-5w1s` makes, as a script to copy and change: Finn et al.'s
setting (meta-batch 32, inner learning rate 0.4, one inner step in meta-training and three at
meta-test, second-order meta-gradient), model selection on meta-validation tasks, cross-task
testing on 1000 meta-test tasks with a 95% CI, and φ saved as a weights-only file. On a CPU,
MAML's 30,000 steps take days; the same script runs on a GPU with ``--device cuda``.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from metaphi import MAML, conv4, evaluate, fixed_tasks, sample_tasks
from metaphi.data import omniglot_sources


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", help="folder with images_background.zip and "
                    "images_evaluation.zip (default: $METAPHI_DATA/omniglot)")
    ap.add_argument("--download", action="store_true", help="download the zips (checksummed)")
    ap.add_argument("--split", default="vinyals", help="class split: 'vinyals' or a folder "
                    "with train.txt, val.txt and test.txt")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30000, help="outer steps")
    ap.add_argument("--meta-batch", type=int, default=32, help="tasks per outer step")
    ap.add_argument("--first-order", action="store_true", help="FOMAML's meta-gradient")
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-tasks", type=int, default=200)
    ap.add_argument("--test-tasks", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="maml_omniglot.pt", help="where φ is saved")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.manual_seed(args.seed)  # the initialisation; tasks follow from the seed

    # tasks: episodes over disjoint meta-train / meta-val / meta-test character classes
    train, val, test = omniglot_sources(args.data_dir, n_way=args.ways, k_shot=args.shots,
                                        n_query=15, split=args.split, download=args.download)

    # f_φ: a few SGD steps from a learned initialisation φ of a Conv-4 classifier
    learner = MAML(conv4(args.ways), inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
                   first_order=args.first_order).to(args.device)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    best: dict[str, Any] = {"mean": -1.0}

    for step in range(args.steps):
        # outer step: the meta-gradient of the mean query loss over a meta-batch of tasks
        learner.train()
        opt.zero_grad()
        tasks = sample_tasks(train, args.seed, "train", step, n=args.meta_batch)
        stats = learner.meta_backward([t.to(args.device) for t in tasks])
        opt.step()

        # model selection: keep the φ that does best on meta-validation tasks
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            learner.eval()
            score = evaluate(learner, fixed_tasks(val, args.seed, "val", args.val_tasks),
                             device=args.device)
            if score["mean"] > best["mean"]:
                best = {**score, "step": step + 1, "state": copy.deepcopy(learner.state_dict())}
            print(f"step {step + 1}: train loss {stats['loss']:.3f}, meta-val accuracy "
                  f"{100 * score['mean']:.2f} ± {100 * score['ci95']:.2f}%", flush=True)

    # cross-task testing: the selected φ, adapted to each unseen task's support set
    learner.load_state_dict(best.pop("state"))
    learner.eval()
    result = evaluate(learner, fixed_tasks(test, args.seed, "test", args.test_tasks),
                      device=args.device, progress=True, total=args.test_tasks)
    print(f"meta-test {args.ways}-way {args.shots}-shot accuracy (φ of step {best['step']}): "
          f"{100 * result['mean']:.2f} ± {100 * result['ci95']:.2f}% over "
          f"{result['tasks']} tasks")
    torch.save(learner.state_dict(), args.out)  # reload: torch.load(path, weights_only=True)
    return result


if __name__ == "__main__":
    main()
