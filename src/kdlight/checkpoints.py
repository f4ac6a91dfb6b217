"""Load network weights from the checkpoint formats users already hold, safely.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: a file
whose unpickling would run code is refused, never executed. Recognised formats:

- ``kd-project``: the original KD project's ``best.pth.tar`` = ``{'epoch', 'state_dict',
  'optim_dict'}`` (teachers trained under ``nn.DataParallel`` carry a ``module.`` prefix);
- ``bearpaw``: bearpaw/pytorch-classification's ``checkpoint.pth.tar`` / ``model_best.pth.tar``
  = ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}``, keys prefixed ``module.``;
- ``lightning``: a kdlight Lightning checkpoint; the network is ``student.*`` if present, else
  ``net.*`` (ClassifierModule, DistillationModule); ``teacher.*`` and other keys are ignored;
- ``repdistiller``: HobbitLong/RepDistiller's and megvii-research/mdistiller's
  ``ckpt_epoch_240.pth`` / ``<model>_best.pth`` = ``{'epoch', 'model', 'accuracy' or 'best_acc',
  'optimizer'}`` (e.g. ``save/models/resnet32x4_vanilla/ckpt_epoch_240.pth``);
- ``kdlight-store``: a teacher-store file ``{'state_dict': <net state dict>, 'kdlight': {meta}}``;
- ``state_dict``: a bare state dict (or ``{'state_dict': ...}`` with nothing else we know).

Prefixes are stripped (also ``_orig_mod.`` from ``torch.compile``), then the weights are
loaded strictly; a mismatch raises :class:`~kdlight.errors.CheckpointError` naming the
missing/unexpected keys and the first shape mismatch.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlight.errors import CheckpointError

_SHOWN = 3  # how many example keys an error message lists
_LIGHTNING_PREFIXES = ("student.", "net.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffers that PyTorch < 0.4.1 did not save; BatchNorm fills them in itself on load.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``path`` safely; return the network's state dict (prefix stripped) and its metadata.

    The metadata always has ``format`` (one of the names in this module's docstring) and
    ``path``; where the file records them also ``epoch``, ``best_acc``, ``acc``,
    ``global_step``, ``prefix`` (what was stripped) and, for the teacher store, its own keys.
    """
    obj = load_checkpoint_file(path)
    state, meta = _extract(obj, path)
    state, wrappers = _strip_wrappers(state)
    if wrappers:
        meta["prefix"] = (meta.get("prefix") or "") + wrappers
    meta["path"] = str(path)
    return state, meta


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, bounded, with one-sentence errors.

    Before anything is allocated, the tensor storages the file declares are checked against
    the bytes it holds (:func:`declared_storage_problem`): a small file cannot make the loader
    allocate a huge tensor. A pickle that names anything outside torch's weights-only
    allowlist is refused (the blocked global is named), never run.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise CheckpointError(f"checkpoint {path} is {what}; name a checkpoint file.")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    # torch.save writes a zip archive ("PK"), or before PyTorch 1.6 a protocol-2 pickle (0x80).
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        what = "it is empty" if not magic else "it is neither a zip archive nor a pickle"
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint file: {what}.")
    problem = declared_storage_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} was refused before loading: {problem}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked, detail = _refusal_detail(exc)
        if blocked:
            raise CheckpointError(
                f"checkpoint {path} was refused: it is not a weights-only file, its pickle names "
                f"{blocked}, and loading it could execute code."
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file, it may be corrupt or truncated "
            f"({detail})."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        detail = _first_line(exc)
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file, it may be corrupt or truncated "
            f"({type(exc).__name__}{': ' + detail if detail else ''})."
        ) from exc


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return the network state dict stored in ``path`` (any recognised format, prefix stripped)."""
    return read_checkpoint(path)[0]


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load the weights in ``path`` into ``model`` strictly; return the checkpoint's metadata.

    Raises :class:`CheckpointError` when the keys or shapes do not fit ``model``'s
    architecture, naming the first few missing and unexpected keys and the first shape
    mismatch. ``num_batches_tracked`` buffers may be absent (checkpoints from PyTorch < 0.4.1).
    """
    state, meta = read_checkpoint(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{_count(missing, 'missing key')} ({_examples(missing)})")
        if unexpected:
            problems.append(f"{_count(unexpected, 'unexpected key')} ({_examples(unexpected)})")
        if mismatched:
            key, theirs, ours = mismatched[0]
            problems.append(
                f"{_count(mismatched, 'shape mismatch')} (first: {key} is {list(theirs)} in the "
                f"checkpoint but {list(ours)} in the model)"
            )
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: {', '.join(problems)}"
            f"{_arch(model)}."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # defensive: the checks above should catch every mismatch
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: {_first_line(exc)}"
            f"{_arch(model)}."
        ) from exc
    return meta


def weights_hash(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a model's state dict: every key, dtype, shape and byte, in key order.

    Equal weights give equal hashes on any device; use it in cache keys (e.g. teacher logits).
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    for key, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def nonfinite_weights(model: nn.Module | Mapping[str, torch.Tensor]) -> str | None:
    """``"N of M tensors, first: <name>"`` when floating weights hold NaN/Inf, else None."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    floats = {k: v for k, v in state.items() if torch.is_floating_point(v)}
    bad = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    if not bad:
        return None
    return f"{len(bad)} of {len(floats)} tensors, first: {bad[0]}"


def _extract(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a loaded checkpoint object into (state dict, metadata) by recognising its format."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} is not a state dict: it holds a {type(obj).__name__}, "
            "not a mapping of parameter names to tensors."
        )
    inner = obj.get("state_dict")
    if not isinstance(inner, Mapping) and isinstance(obj.get("model"), Mapping):
        meta = {"format": "repdistiller", **_pick(obj, "epoch", "accuracy", "best_acc")}
        state = dict(obj["model"])
    elif isinstance(inner, Mapping):
        meta: dict[str, Any]
        if "pytorch-lightning_version" in obj:
            meta = {"format": "lightning"}
            for k in ("epoch", "global_step", "pytorch-lightning_version"):
                if k in obj:
                    meta[k] = obj[k]
            state, prefix = _lightning_network(inner, path)
            meta["prefix"] = prefix
        elif isinstance(obj.get("kdlight"), Mapping):
            meta = {**obj["kdlight"], "format": "kdlight-store"}
            state = dict(inner)
        elif "optim_dict" in obj:
            meta = {"format": "kd-project", **_pick(obj, "epoch")}
            state = dict(inner)
        elif "best_acc" in obj or "optimizer" in obj:
            meta = {"format": "bearpaw", **_pick(obj, "epoch", "acc", "best_acc")}
            state = dict(inner)
        else:
            meta = {"format": "state_dict", **_pick(obj, "epoch")}
            state = dict(inner)
    else:
        meta = {"format": "state_dict"}
        state = dict(obj)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        what = f"entry {bad[0]!r} is a {type(state[bad[0]]).__name__}" if bad else "it is empty"
        raise CheckpointError(
            f"checkpoint {path} is not a state dict: {what}, where parameter tensors were expected."
        )
    return state, meta


def _lightning_network(
    state: Mapping[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], str]:
    """The trained network's weights (``student.*``, else ``net.*``) in a Lightning state dict."""
    for prefix in _LIGHTNING_PREFIXES:
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked, prefix
    roots = sorted({k.split(".", 1)[0] + "." for k in state})
    raise CheckpointError(
        f"checkpoint {path} is a Lightning checkpoint without 'student.' or 'net.' weights "
        f"(its keys start with {', '.join(roots[:_SHOWN]) or 'nothing'})."
    )


def _strip_wrappers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip prefixes shared by every key that wrappers add: ``nn.DataParallel``/DDP
    (``module.``) and ``torch.compile`` (``_orig_mod.``), in any nesting."""
    stripped = ""
    while True:
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped += prefix
                break
        else:
            return state, stripped


def _arch(model: nn.Module) -> str:
    """``"; the model is the <arch> architecture"`` for a zoo model that names itself (``arch``)."""
    arch = getattr(model, "arch", None)
    return f"; the model is the {arch} architecture" if isinstance(arch, str) and arch else ""


def _pick(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    out = {}
    for k in keys:
        if k in obj:
            v = obj[k]
            out[k] = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
    return out


def _count(items: list, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{len(items)} {noun if len(items) == 1 else plural}"


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (", ..." if len(keys) > _SHOWN else "")


def _first_line(exc: BaseException) -> str:
    """The first sentence of ``exc``'s message, so our own message stays one sentence."""
    text = str(exc).strip().splitlines()
    return text[0].strip().split(". ")[0].rstrip(".") if text else ""


def _refusal_detail(exc: BaseException) -> tuple[str | None, str]:
    """(the global torch's weights-only unpickler blocked, or None; its reason in a few words).

    Only the unpickler's own reason is kept: torch's advice around it (which suggests
    ``weights_only=False``) is never repeated to the user.
    """
    text = str(exc)
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue", "(")
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1]
    else:
        reason = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith(advice))
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    reason = lines[0] if lines else "a global or opcode outside torch's weights-only allowlist"
    found = re.search(r"GLOBAL ([\w.]+)", reason) or re.search(
        r"(?:function|class|global) '?([\w.]+\.[\w]+)", reason
    )
    if found:
        return found.group(1), reason
    if reason.startswith("Unsupported operand") or not lines:
        return None, reason.split(". ")[0].rstrip(".")
    return "something outside the allowlist (" + reason.split(". ")[0].rstrip(".") + ")", reason


#: Element sizes of the storage classes a checkpoint's pickle names (``torch.FloatStorage``, ...).
def _element_size(storage_type: Any) -> int:
    dtype = getattr(storage_type, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return 8  # unknown: the largest, so the bound stays an upper one


def declared_storage_problem(path: str | os.PathLike) -> str | None:
    """Why the tensor storages a checkpoint declares cannot be in it, or None when they can.

    The pickle is walked by torch's weights-only unpickler with every storage replaced by a
    "meta" one (no memory), collecting each storage's declared size; a zip checkpoint must
    hold a record of at least that size per storage, a legacy (pre-1.6) file that many bytes
    in all. Anything the walk cannot follow is left to ``torch.load`` itself.
    """
    import pickletools
    import zipfile

    try:
        from torch._weights_only_unpickler import Unpickler
    except ImportError:  # pragma: no cover - private API; torch.load still checks zip records
        return None
    declared: dict[str, int] = {}

    def persistent_load(saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError("unknown persistent id")
        storage_type, key, _location, numel = saved_id[1:5]
        nbytes = int(numel) * _element_size(storage_type)
        declared[str(key)] = max(declared.get(str(key), 0), nbytes)
        dtype = getattr(storage_type, "dtype", torch.uint8)
        return torch.storage.TypedStorage(
            wrap_storage=torch.UntypedStorage(nbytes, device="meta"), dtype=dtype, _internal=True
        )

    def walk(fh) -> None:
        unpickler = Unpickler(fh, encoding="utf-8")
        unpickler.persistent_load = persistent_load
        unpickler.load()

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return None
                prefix = pkl[: -len("data.pkl")]
                with zf.open(pkl) as fh:
                    walk(io.BytesIO(fh.read()))
                sizes = {n: zf.getinfo(n).file_size for n in names}
            for key, nbytes in declared.items():
                have = sizes.get(f"{prefix}data/{key}", 0)
                if nbytes > have:
                    return (
                        f"it declares a tensor storage of {_size(nbytes)} but holds {_size(have)} "
                        "for it (a corrupt or crafted file)"
                    )
            return None
        size = path.stat().st_size
        with open(path, "rb") as fh:
            for _ in range(3):  # magic number, protocol version, system info: skipped unrun
                for _op in pickletools.genops(fh):
                    pass
            walk(fh)
        total = sum(declared.values())
        if total > size:
            return (
                f"it declares {_size(total)} of tensor storage in a file of {_size(size)} "
                "(a corrupt or crafted file)"
            )
    except Exception:  # noqa: BLE001 - anything unusual: torch.load reports it in its own words
        return None
    return None


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} bytes"
