"""The notebooks are committed without outputs and run top to bottom on a tiny run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from omegaconf import OmegaConf

from kdlight.run.train import run
from tests.helpers.overrides import ROOT, compose_cfg

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def kd_run(tiny_data_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nb-run")
    cfg = compose_cfg(["+experiment=fmnist_mlp_kd", "trainer.max_epochs=2"], tmp, tiny_data_dir)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory) -> Path:
    """A kernelspec running this interpreter, so the test needs no installed python3 kernel."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "kdlight-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "kdlight test", "language": "python"})
    )
    return root


def execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="kdlight-test", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} has outputs; clear them"
            )
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters'"


@pytest.mark.parametrize("name", ["dark_knowledge", "test_analysis"])
def test_notebook_runs_on_a_tiny_run(name, kd_run, jupyter_path, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("KDLIGHT_NB_RUN_DIR", str(kd_run))
    monkeypatch.setenv("KDLIGHT_NB_OUT", str(tmp_path / "analysis"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = execute(ROOT / "notebooks" / f"{name}.ipynb", tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (3 if name == "dark_knowledge" else 2)
    if name == "test_analysis":
        assert (tmp_path / "analysis" / "analysis.md").is_file()
        assert (tmp_path / "analysis" / "last" / "analysis.json").is_file()
