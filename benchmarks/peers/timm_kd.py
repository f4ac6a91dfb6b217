"""timm's distillation, driven through timm's own package API the way its ``train.py`` drives it.

Runs in benchmarks/peers/.venv (timm, no kdlight). timm's ``train.py`` (the script behind
``--kd-model-name`` / ``--kd-distill-type``) ships in timm's GitHub repository only: neither the
PyPI wheel nor the sdist of timm 1.0.31 contains it (the sdist's tests import a ``train`` module
they do not ship). So this script makes the calls ``train.py`` makes, with its flag names:
``timm.create_model`` for the student, ``resolve_data_config`` / ``create_dataset`` /
``create_loader`` for the data, ``create_optimizer_v2`` for SGD, and ``timm.task``'s
``LogitDistillationTask`` / ``FeatureDistillationTask`` (teacher by name + a weights file), whose
``forward(input, target)`` gives the loss each step. What ``train.py`` does by default and this
script does not (per-epoch validation, checkpoint saving, summary.csv, a cosine LR schedule with
warm-up, label smoothing 0.1) is listed in docs/performance/peers.md.

Writes ``--result`` JSON: per-epoch training seconds and samples, and top-1 accuracy on ``val/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.task import FeatureDistillationTask, LogitDistillationTask
from timm.utils import ParseKwargs, accuracy, random_seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--opt", default="sgd", help="train.py's --opt: timm's 'sgd' is Nesterov, 'momentum' is not"
    )
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--drop", type=float, default=0.0, help="train.py's --drop: classifier dropout")
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0])
    p.add_argument("--color-jitter", type=float, default=0.0)
    p.add_argument("--train-interpolation", default="bilinear")
    p.add_argument("--no-prefetcher", action="store_true")
    p.add_argument(
        "--channels-last", action="store_true", help="train.py's flag: NHWC model and inputs"
    )
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--kd-model-name", required=True)
    p.add_argument("--kd-pretrained-path", required=True, help="teacher weights (a state dict)")
    p.add_argument("--kd-distill-type", default="logit", choices=["logit", "feature"])
    p.add_argument("--distill-loss-weight", type=float, default=None)
    p.add_argument("--task-loss-weight", type=float, default=None)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument(
        "--max-steps", type=int, default=0, help="stop each epoch after N steps (0: all)"
    )
    # train.py's key=value dictionaries, parsed by the action train.py uses, e.g.
    # --model-kwargs zero_init_last=False --opt-kwargs filter_bias_and_bn=False
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs)
    p.add_argument("--opt-kwargs", nargs="*", default={}, action=ParseKwargs)
    p.add_argument("--result", required=True)
    return p.parse_args(argv)


def build_task(args: argparse.Namespace, model: nn.Module, device: torch.device) -> nn.Module:
    """The training task ``train.py`` builds for ``--kd-distill-type``."""
    common = dict(
        student_model=model,
        teacher_model=args.kd_model_name,
        teacher_pretrained_path=args.kd_pretrained_path,
        criterion=nn.CrossEntropyLoss(label_smoothing=args.smoothing),
        distill_loss_weight=args.distill_loss_weight,
        task_loss_weight=args.task_loss_weight,
        device=device,
    )
    if args.kd_distill_type == "feature":
        return FeatureDistillationTask(**common)
    return LogitDistillationTask(**common, temperature=args.kd_temperature)


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy (0-1) over ``loader``."""
    model.eval()
    correct, total = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        top1 = accuracy(model(x), y, topk=(1,))[0]
        correct += float(top1) * y.numel() / 100.0
        total += y.numel()
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    random_seed(args.seed, 0)
    model = create_model(
        args.model,
        pretrained=False,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        **args.model_kwargs,
    )
    data_config = resolve_data_config(
        {"input_size": (3, args.img_size, args.img_size), "crop_pct": args.crop_pct}, model=model
    )
    model.to(device)
    if args.channels_last:  # as train.py: the model, then each input batch
        model.to(memory_format=torch.channels_last)
    task = build_task(args, model, device)
    optimizer = create_optimizer_v2(
        task.trainable_module,
        opt=args.opt,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        **args.opt_kwargs,
    )
    train_set = create_dataset("", root=args.data_dir, split="train", is_training=True)
    eval_set = create_dataset("", root=args.data_dir, split="val", is_training=False)
    prefetch = not args.no_prefetcher
    loader = create_loader(
        train_set,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=True,
        use_prefetcher=prefetch,
        scale=tuple(args.scale),
        hflip=0.5,
        color_jitter=args.color_jitter,
        interpolation=args.train_interpolation,
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        device=device,
    )
    eval_loader = create_loader(
        eval_set,
        input_size=data_config["input_size"],
        batch_size=args.batch_size,
        is_training=False,
        use_prefetcher=prefetch,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        num_workers=args.workers,
        crop_pct=data_config["crop_pct"],
        device=device,
    )
    epochs = []
    for _epoch in range(args.epochs):
        task.train()
        t0, samples, steps = time.perf_counter(), 0, 0
        for x, y in loader:
            if not prefetch:
                x, y = x.to(device), y.to(device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = task(x, y)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            samples += y.shape[0]
            steps += 1
            if steps % args.log_interval == 0:
                logging.getLogger("train").info("step %d loss %.4f", steps, out["loss"].item())
            if args.max_steps and steps >= args.max_steps:
                break
        epochs.append({"seconds": time.perf_counter() - t0, "samples": samples, "steps": steps})
    acc = evaluate(model, eval_loader, device)
    result = {
        "tool": "timm",
        "epochs": epochs,
        "acc": acc,
        "params": sum(p.numel() for p in model.parameters()),
        "in_process_s": time.perf_counter() - t_start,
    }
    Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
