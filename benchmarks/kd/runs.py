"""Each side of a case as one run built from the same composed experiment config.

:func:`compose` gives the config a user gets for ``+experiment=NAME`` (with the benchmark's
plumbing); :func:`bare`, :func:`plain` and :func:`kdlight` train from it: the hand-written loops
with the config's networks and optimizer, kdlight through ``kdlight.run.train.run`` with the epoch
timer attached. Each returns :func:`kd.harness.epochs_summary`'s numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kd.harness import Options, epochs_summary, log
from kd.loops import normalised, train_bare, train_kd

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "src" / "kdlight" / "conf"


def compose(
    experiment: str,
    overrides: list[str],
    out_dir: Path,
    store_dir: Path,
    o: Options,
    full_callbacks: bool = False,
):
    """The config a user gets for ``+experiment=NAME``, with benchmark plumbing: no logger, bar, validation.

    ``full_callbacks``: keep the logger, callbacks, checkpoints and validation a user gets.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    base = [
        f"+experiment={experiment}",
        f"paths.data_dir={o.data_dir}",
        f"paths.output_dir={out_dir}",
        f"paths.store_dir={store_dir}",
        f"trainer.accelerator={'gpu' if o.device == 'cuda' else 'cpu'}",
        f"data.batch_size={o.batch_size}",
        f"data.val_size={o.val_size}",
        f"data.eval_batch_size={o.batch_size}",
        "+trainer.limit_test_batches=1",  # run() always tests: one training-sized batch keeps it small
        "module.log_agreement=false",  # else the test pass runs the teacher over the test set
    ]
    if o.fused == "none":
        base.append("module.fused_optimizer=false")
    if not full_callbacks:
        base += [
            "~logger",
            "callbacks=none",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false",
            "+trainer.enable_checkpointing=false",  # else Lightning adds a default ModelCheckpoint
            "+trainer.limit_val_batches=0",  # only training is timed; validation would only add noise
        ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=base + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


def subset(train_y: torch.Tensor, o: Options, samples: int | None) -> tuple[torch.Tensor, float]:
    """kdlight's training indices for ``samples`` (None: all) and the ``data.labeled_fraction`` giving them."""
    from kdlight.data.subsets import labeled_subset, split_train_val

    pool, _ = split_train_val(train_y, o.val_size, 0)
    fraction = 1.0 if samples is None or samples >= pool.numel() else samples / pool.numel()
    return labeled_subset(pool, train_y, fraction, 0), fraction


def save_teacher(cfg, path: Path, batch: int = 64) -> Path:
    """Save a randomly initialised teacher's state_dict (its BatchNorm statistics set on random inputs)."""
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = instantiate(cfg.teacher)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        shape = (batch, 3, 32, 32) if "cifar" in cfg.data._target_.lower() else (batch, 1, 28, 28)
        net.train()
        with torch.no_grad():  # a few passes so eval-mode logits stay in float16's range
            for _ in range(3):
                net(torch.randn(shape))
    torch.save(net.state_dict(), path)
    return path


def load_teacher(cfg, teacher_file: Path) -> torch.nn.Module:
    """The config's teacher network with the weights :func:`save_teacher` wrote."""
    from hydra.utils import instantiate

    net = instantiate(cfg.teacher)
    net.load_state_dict(torch.load(teacher_file, map_location="cpu", weights_only=True))
    return net


def normalised_train(
    arrays, idx: torch.Tensor, cfg, pad: int = 0, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images ``idx`` as one normalised float tensor (the bare loop's input) and their labels."""
    x = normalised(
        arrays.train_x[idx],
        list(cfg.data.mean),
        list(cfg.data.std),
        pad=pad,
        channels_last=channels_last,
    )
    return x, arrays.train_y[idx]


def loop_optimizer(cfg, student: torch.nn.Module, o: Options) -> torch.optim.Optimizer:
    """The hand-written loops' optimizer: the config's, as written (``--fused all``: its fused kernel)."""
    from hydra.utils import instantiate

    factory = instantiate(cfg.module.optimizer)
    if o.fused == "all":
        return factory(student.parameters(), fused=True)
    return factory(student.parameters())


def bare(
    cfg,
    x: torch.Tensor,
    y: torch.Tensor,
    o: Options,
    epochs: int,
    *,
    teacher_file: Path | None = None,
    pad: int = 0,
    channels_last: bool = False,
    tag: str = "bare",
) -> dict[str, Any]:
    """The bare loop (no teacher) or the expert's online KD loop (``teacher_file``), same networks and optimizer as ``cfg``."""
    from hydra.utils import instantiate

    teacher = None if teacher_file is None else load_teacher(cfg, teacher_file)
    torch.manual_seed(int(cfg.seed))
    student = instantiate(cfg.student)
    optimizer = loop_optimizer(cfg, student, o)
    distill = cfg.get("distill")
    res = train_bare(
        student,
        x,
        y,
        optimizer,
        batch_size=o.batch_size,
        epochs=epochs,
        device=o.device,
        seed=int(cfg.seed),
        pad=pad,
        channels_last=channels_last,
        teacher=teacher,
        alpha=float(distill.alpha) if distill is not None else 0.0,
        temperature=float(distill.temperature) if distill is not None else 1.0,
    )
    result = epochs_summary(res["epochs"])
    log(f"  {tag}: {result['samples_per_s']} samples/s over {result['samples']} samples")
    return result


def plain(cfg, teacher_file: Path, dataset, o: Options, epochs: int) -> dict[str, Any]:
    """The plain loop with the same teacher weights, student, optimizer and loss settings as ``cfg``."""
    from hydra.utils import instantiate

    start = time.perf_counter()
    teacher = load_teacher(cfg, teacher_file)
    torch.manual_seed(int(cfg.seed))
    student = instantiate(cfg.student)
    optimizer = loop_optimizer(cfg, student, o)
    res = train_kd(
        teacher,
        student,
        dataset,
        optimizer,
        alpha=float(cfg.distill.alpha),
        temperature=float(cfg.distill.temperature),
        batch_size=o.batch_size,
        epochs=epochs,
        num_workers=o.num_workers,
        device=o.device,
        seed=int(cfg.seed),
    )
    wall = time.perf_counter() - start
    result = epochs_summary(res["epochs"], wall)
    log(
        f"  plain: {result['samples_per_s']} samples/s over {result['samples']} samples ({wall:.1f} s wall)"
    )
    return result


def kdlight(
    tag: str,
    experiment: str,
    overrides: list[str],
    work: Path,
    store: Path,
    o: Options,
    full_callbacks: bool = False,
) -> dict[str, Any]:
    """One ``kdlight.run.train.run`` with the epoch timer attached; its timings and wall time."""
    from kdlight.run.train import run

    out_dir = work / "runs" / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    timer_file = out_dir / "timer.json"
    start = time.perf_counter()
    cfg = compose(
        experiment,
        overrides
        + ["+callbacks.timer._target_=kd.harness.EpochTimer", f"+callbacks.timer.out={timer_file}"],
        out_dir,
        store,
        o,
        full_callbacks,
    )
    run(cfg)
    wall = time.perf_counter() - start
    result = epochs_summary(json.loads(timer_file.read_text())["epochs"], wall)
    log(
        f"  {tag}: {result['samples_per_s']} samples/s over {result['samples']} samples ({wall:.1f} s wall)"
    )
    return result
