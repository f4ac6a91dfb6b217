"""The KD speed benchmark (``benchmarks/bench_kd.py``), in three parts.

- :mod:`kd.harness`: timing (the epoch and first-step callbacks), rounds, ratios, targets, JSON.
- :mod:`kd.loops`: the hand-written loops (bare = the limit, expert online KD, plain PyTorch KD).
- :mod:`kd.runs`: each side as one run built from the composed experiment config (kdlight's too).
- :mod:`kd.cases`: the named cases (``fmnist_mlp``, ``cifar_resnet18_cnn``, ``sweep10``, ...).
- :mod:`kd.cli`: the options and ``main``.

Importing this package imports nothing: a fresh ``python -m kdlight.train`` that instantiates
``kd.harness.FirstStep`` pays for the harness alone.
"""
