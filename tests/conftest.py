"""Test-wide settings."""
import os

import torch

# The suite's networks are tiny: one intra-op thread is faster than two and keeps timings stable
# when the machine is busy.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
