"""torchdistill's distillation from a YAML config, driven through its package API as its example
script (``examples/torchvision/image_classification.py``) drives it.

Runs in benchmarks/peers/.venv (torchdistill, no kdlight). The example script ships in
torchdistill's GitHub repository only: the PyPI wheel and sdist of torchdistill 1.1.5 hold the
``torchdistill`` package and no ``examples/`` folder. So this script makes the script's calls,
in its order: ``yaml_util.load_yaml_file`` (the config builds the datasets), ``set_seed``,
``get_image_classification_model`` (torchvision by ``key``) + ``load_ckpt`` for both models,
``get_distillation_box`` (teacher and student wrapped with the config's hooks, loss, optimizer,
data loaders), then per epoch ``pre_epoch_process`` / for each batch ``forward_process`` +
``post_forward_process`` (with the script's per-step ``loss.item()``, img/s meter and NaN check)
/ ``post_epoch_process``, and the final test of the student on ``test.test_data_loader``.
Left out, as listed in docs/performance/peers.md: the script's per-epoch validation and its
checkpoint on a new best validation accuracy.

Writes ``--result`` JSON: per-epoch training seconds and samples, and top-1 accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchdistill.common import yaml_util
from torchdistill.common.main_util import load_ckpt, set_seed
from torchdistill.core.distillation import get_distillation_box
from torchdistill.datasets.util import build_data_loader
from torchdistill.misc.log import MetricLogger, SmoothedValue, set_basic_log_config
from torchdistill.models.official import get_image_classification_model
from torchdistill.models.registry import get_model


def load_model(model_config: dict, device: torch.device) -> torch.nn.Module:
    """The example script's ``load_model``: torchvision by key, else the registry; then ``src_ckpt``."""
    model = get_image_classification_model(model_config, False)
    if model is None:
        model = get_model(
            model_config["key"], model_config.get("repo_or_dir"), **model_config["kwargs"]
        )
    load_ckpt(model_config.get("src_ckpt"), model=model, strict=True)
    return model.to(device)


def train_one_epoch(box, device: torch.device, epoch: int, log_freq: int, max_steps: int) -> dict:
    """One epoch as the example script runs it; its seconds, samples and steps."""
    logger = MetricLogger(delimiter="  ")
    logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
    t0, samples, steps = time.perf_counter(), 0, 0
    for sample_batch, targets, supp_dict in logger.log_every(
        box.train_data_loader, log_freq, f"Epoch: [{epoch}]"
    ):
        start = time.time()
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        n = sample_batch.shape[0]
        logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
        logger.meters["img/s"].update(n / max(time.time() - start, 1e-9))
        if torch.isnan(loss) or torch.isinf(loss):
            raise ValueError(f"The training loop was broken due to loss = {loss}")
        samples += n
        steps += 1
        if max_steps and steps >= max_steps:
            break
    return {"seconds": time.perf_counter() - t0, "samples": samples, "steps": steps}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy (0-1), as the script's ``evaluate`` counts it."""
    model.eval()
    correct, total = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="yaml file path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--max-steps", type=int, default=0, help="stop each epoch after N steps (0: all)"
    )
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    set_basic_log_config()
    set_seed(args.seed)
    config = yaml_util.load_yaml_file(str(Path(args.config).expanduser()))
    device = torch.device(args.device)
    dataset_dict = config["datasets"]
    models = config["models"]
    teacher = load_model(models["teacher_model"], device)
    student = load_model(models["student_model"], device)
    train_config = config["train"]
    box = get_distillation_box(teacher, student, dataset_dict, train_config, device, None, False, 1)
    epochs = []
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        epochs.append(train_one_epoch(box, device, epoch, train_config["log_freq"], args.max_steps))
        box.post_epoch_process()
    box.clean_modules()
    test_config = config["test"]["test_data_loader"]
    loader = build_data_loader(dataset_dict[test_config["dataset_id"]], test_config, False)
    acc = evaluate(student, loader, device)
    result = {
        "tool": "torchdistill",
        "epochs": epochs,
        "acc": acc,
        "params": sum(p.numel() for p in student.parameters()),
        "in_process_s": time.perf_counter() - t_start,
    }
    Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
