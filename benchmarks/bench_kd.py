"""Training speed of kdlight against the machine's limit (a bare loop), an expert's KD loop and a
plain PyTorch KD loop; prints one JSON document on stdout.

Usage: ``.venv/bin/python benchmarks/bench_kd.py [--cases fmnist_mlp,cifar_resnet18_cnn,sweep10,fixed_cost] [--quick]``
(see benchmarks/README.md for what each case measures). Progress goes to stderr. The code is in
``benchmarks/kd/``: harness (timing, rounds, ratios, JSON), loops (the hand-written loops),
runs (each side from the composed config), cases (one file a case), cli (options, main).
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # the kd package; Hydra instantiates kd.harness.EpochTimer
    sys.path.insert(0, str(BENCH_DIR))

from kd.cli import main  # noqa: E402 - after the path above

if __name__ == "__main__":
    sys.exit(main())
