"""What makes a run tiny (CPU, few samples, one epoch, no progress bar), for ``compose()`` and the
command line alike, and the config a test gets with it."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(ROOT / "src" / "kdlight" / "conf")
EXPERIMENTS = sorted(
    p.stem for p in (ROOT / "src" / "kdlight" / "conf" / "experiment").glob("*.yaml")
)


def tiny(batch_size: int = 16, eval_batch_size: int = 16) -> list[str]:
    """The overrides of a tiny run: tiny data's sizes, CPU, one epoch (the teacher's too), no bar."""
    return [
        "data.download=false",
        "data.val_size=50",
        f"data.batch_size={batch_size}",
        f"data.eval_batch_size={eval_batch_size}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "~callbacks.progress_bar",
        "teacher_train.max_epochs=1",
    ]


#: A tiny, quiet command-line run: :func:`tiny`, less the callbacks and logger no CLI test reads.
TINY_CLI = [
    *tiny(eval_batch_size=50),
    "~callbacks.lr_monitor",
    "~callbacks.test_analysis",
    "~logger",
]


def compose_cfg(
    overrides: list[str], tmp_path: Path, data_dir: Path, store_dir: Path | None = None
) -> DictConfig:
    """The config a user would get, made tiny: CPU, few samples, no progress bar."""
    base = [
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.store_dir={store_dir or tmp_path / 'store'}",
        *tiny(),
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg
