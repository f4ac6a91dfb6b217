"""Writing the deployable files: ONNX (checked with onnxruntime) and TorchScript (checked on reload).

TorchScript is deprecated upstream (torch >= 2.9 warns); the ONNX file is the primary artefact.
Both are checked against PyTorch's eval-mode logits on a random batch of :data:`CHECK_BATCH`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdlight.deploy.measure import eval_mode, onnx_session, random_batch
from kdlight.errors import KdlightError
from kdlight.io import atomic_output

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
CHECK_BATCH = 8  # rows of the random batch the exports are checked on (not the traced size)


def export_onnx(
    net: nn.Module, path: Path, input_shape: Sequence[int], opset: int = DEFAULT_OPSET
) -> Path:
    """Write ``net`` (eval mode) to ``path`` as ONNX: input ``input`` [batch, *shape], output ``logits``, batch dynamic."""
    import onnx

    example = (random_batch(2, input_shape),)  # batch 2: a size-1 example would be specialised
    # written beside ``path`` and renamed: never through a link planted at ``path``
    with atomic_output(path) as tmp, eval_mode(net), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                net,
                example,
                None,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            program.save(str(tmp))
        except Exception as exc:  # noqa: BLE001 - some graphs only the TorchScript-based exporter takes
            log.warning(
                "torch.export-based ONNX export failed (%s); retrying with dynamo=False", exc
            )
            torch.onnx.export(
                net,
                example,
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    onnx.checker.check_model(str(path))
    return path


def check_onnx(
    net: nn.Module, path: Path, input_shape: Sequence[int], batch: int = CHECK_BATCH
) -> float:
    """Max abs difference between onnxruntime's and PyTorch's (eval) logits on a random batch."""
    x = random_batch(batch, input_shape, seed=1)
    with eval_mode(net), torch.inference_mode():
        ref = net(x).numpy()
    got = onnx_session(path).run(["logits"], {"input": x.numpy()})[0]
    return float(np.abs(got - ref).max())


def export_torchscript(
    net: nn.Module, path: Path, input_shape: Sequence[int], batch: int = CHECK_BATCH
) -> float:
    """Trace ``net`` to TorchScript at ``path``; reload it and return the max abs difference to eager on a random batch."""
    with eval_mode(net), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(net, (random_batch(2, input_shape),), check_trace=False)
        with atomic_output(path) as tmp:  # never through a link planted at ``path``
            torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(path), map_location="cpu")
        x = random_batch(batch, input_shape, seed=2)
        return float((loaded(x) - net(x)).abs().max())


def require_export_packages() -> None:
    """Raise :class:`KdlightError` naming the optional packages the export needs, if any is missing."""
    import importlib.util

    missing = [
        m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise KdlightError(
            f"exporting needs the packages {', '.join(missing)}, which are not installed; "
            "install them with pip install 'kdlight[export]'."
        )
