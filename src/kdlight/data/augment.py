"""Batched, index-keyed augmentation: the view of sample i at epoch e is a pure function of (seed, e, i).

Because nothing depends on a global RNG, on the batch a sample lands in, or on the device,
the teacher's logits for every (view, sample) can be computed once and reused
(see :mod:`kdlight.teacher.store`).
"""

from __future__ import annotations

import functools
import math

import torch

from kdlight.errors import ConfigError

# Bump when crop_flip_params changes its output: stored teacher logits keyed on it go stale.
AUGMENT_VERSION = 1

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
# Salts that separate the three per-sample streams (dy, dx, flip) and the key inputs.
_SALT_SEED_LO = 0x9E3779B9
_SALT_SEED_HI = 0x85EBCA6B
_SALT_VIEW = 0xC2B2AE35
_SALT_DY = 0x27D4EB2F
_SALT_DX = 0x165667B1
_SALT_FLIP = 0xD3A2646C


def _mul32(x, c: int):
    """Return ``(x * c) mod 2**32`` for ``0 <= x, c < 2**32`` without ever exceeding 2**49.

    Splitting ``x`` into 16-bit halves keeps every intermediate far below 2**63, so the
    same expression is exact on Python ints and on int64 tensors (CPU or CUDA), with no
    reliance on signed-overflow wrap-around.
    """
    lo = x & _MASK16
    hi = x >> 16
    return (lo * c + (((hi * c) & _MASK16) << 16)) & _MASK32


def _mix32(x):
    """Return the "lowbias32" 32-bit finalizer of ``x`` (C. Wellons' hash-prospector).

    ``x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16``, all
    mod 2**32. Inputs must lie in [0, 2**32); works on Python ints and int64 tensors alike.
    """
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _stream_key(seed: int, view: int) -> int:
    """Fold (seed, view) into one 32-bit key; ``seed`` is taken mod 2**64, ``view`` mod 2**32."""
    seed64 = seed & 0xFFFFFFFFFFFFFFFF
    k = _mix32((seed64 & _MASK32) ^ _SALT_SEED_LO)
    k = _mix32(k ^ (seed64 >> 32) ^ _SALT_SEED_HI)
    return _mix32(k ^ (view & _MASK32) ^ _SALT_VIEW)


def sample_hash(idx: torch.Tensor, view: int, seed: int) -> torch.Tensor:
    """Return a 32-bit hash in [0, 2**32) per index (int64, on ``idx``'s device).

    ``h(i) = mix32(mix32(i_lo ^ k) ^ i_hi)`` with ``k = key(seed, view)``, where ``i_lo`` and
    ``i_hi`` are the low and high 32 bits of the non-negative index ``i``.
    """
    if idx.dtype != torch.long:
        idx = idx.long()
    return _index_hash(idx, _stream_key(int(seed), int(view)))


def _index_hash(i, key: int):
    """``mix32(mix32(i_lo ^ key) ^ i_hi)`` of a non-negative index: a Python int or an int64 tensor."""
    h = _mix32((i & _MASK32) ^ key)
    return _mix32(h ^ ((i >> 32) & _MASK32))


def crop_flip_params(
    idx: torch.Tensor, view: int, seed: int, pad: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return per-sample crop offsets ``dy, dx`` in [0, 2*pad] (int64) and flip flags (bool).

    A pure function of (seed, view, idx[j]) for each j: ``dy = mix32(h ^ s_dy) mod (2*pad+1)``,
    likewise ``dx``, and ``flip = mix32(h ^ s_flip) >> 31`` (then masked by ``flip``), where
    ``h = sample_hash(idx, view, seed)``. Integer-only, so identical on CPU and CUDA; no
    global RNG; the result for sample i does not depend on which other samples are in
    ``idx``. The modulo bias is below 2**-28.
    """
    if pad < 0:
        raise ConfigError(f"augmentation pad must be >= 0, got {pad}.")
    if idx.dim() != 1:
        raise ValueError(
            f"idx must be a 1-D tensor of sample indices, got shape {tuple(idx.shape)}"
        )
    h = sample_hash(idx, view, seed)
    span = 2 * pad + 1
    dy = _mix32(h ^ _SALT_DY) % span
    dx = _mix32(h ^ _SALT_DX) % span
    if flip:
        do_flip = (_mix32(h ^ _SALT_FLIP) >> 31).bool()
    else:
        do_flip = torch.zeros_like(idx, dtype=torch.bool)
    return dy, dx, do_flip


def random_crop_flip(
    x: torch.Tensor,
    idx: torch.Tensor,
    view: int,
    seed: int,
    pad: int = 4,
    flip: bool = True,
    fill: float = 0,
) -> torch.Tensor:
    """Return the batch zero-padded by ``pad``, cropped back to HxW at (dy, dx), flipped where chosen.

    ``out[b, c, y, x'] = P[b, c, dy_b + y, dx_b + (W-1-x' if flip_b else x')]`` where ``P`` is
    ``x`` padded with ``fill`` on all four sides and ``(dy, dx, flip) = crop_flip_params(idx,
    view, seed, pad, flip)``. Equals torchvision's ``RandomCrop(H, padding=pad)`` followed by
    ``RandomHorizontalFlip()`` for those offsets. Vectorised (one gather), keeps dtype, shape
    and device of ``x``; ``x`` is (B, C, H, W) and ``idx`` holds the B global sample indices.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if idx.shape != (b,):
        raise ValueError(f"idx must have shape ({b},) to match x, got {tuple(idx.shape)}")
    idx = idx.to(x.device)
    if pad == 0 and not flip:
        return x.clone()
    dy, dx, do_flip = crop_flip_params(idx, view, seed, pad, flip)

    hp, wp = h + 2 * pad, w + 2 * pad
    padded = x.new_full((b, c, hp, wp), fill)
    padded[:, :, pad : pad + h, pad : pad + w] = x

    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    rows = dy[:, None] + ys  # (B, H)
    cols = dx[:, None] + torch.where(do_flip[:, None], w - 1 - xs, xs)  # (B, W)
    lin = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)
    out = torch.gather(padded.reshape(b, c, hp * wp), 2, lin.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def view_of(epoch: int, views: int | None) -> int:
    """Return the augmentation view used at ``epoch``.

    ``epoch`` when ``views`` is None or 0 (a fresh view every epoch, as a standard random
    augmentation pipeline would give); otherwise ``epoch % views``. Reusing K views
    cyclically is an approximation of fresh augmentation: the student sees only K
    distinct versions of each image, in exchange for the teacher's logits being
    computed K times instead of once per epoch.
    """
    if views is None or views == 0:
        return epoch
    if views < 0:
        raise ConfigError(f"number of augmentation views must be >= 0 or null, got {views}.")
    return epoch % views


# ---- per-sample generators: augmentations of whole images of any size (image folders) -------

# Bump when random_resized_crop_params or the image-folder decoding changes its output.
RESIZED_CROP_VERSION = 1


def sample_seed(index: int, view: int, seed: int) -> int:
    """The 32-bit seed of sample ``index``'s generator in ``view``: ``sample_hash(index, view, seed)``.

    The same expression on Python ints (a loader worker calls this once per image; a tensor of
    one element would cost more than decoding a 32x32 JPEG).
    """
    i = int(index)
    if i < 0:
        raise ValueError(f"sample index must be >= 0, got {i}")
    return _index_hash(i, _stream_key(int(seed), int(view)))


def sample_generator(index: int, view: int, seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`sample_seed`.

    Everything drawn from it is a pure function of (seed, view, index): not of the batch, the
    DataLoader worker or the process that draws it.
    """
    return torch.Generator().manual_seed(sample_seed(index, view, seed))


@functools.lru_cache(maxsize=16)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """``log(ratio)`` as torchvision computes it (a float32 tensor), once per ratio."""
    log_ratio = torch.log(torch.tensor(ratio))
    return float(log_ratio[0]), float(log_ratio[1])


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Return ``(top, left, h, w)`` of a random resized crop, drawn from ``generator``.

    torchvision's ``RandomResizedCrop.get_params``, which takes no generator, draw for draw:
    up to 10 tries of area ``A * U(scale)`` and aspect ratio ``exp(U(log ratio))``, a uniform
    position for the first box that fits, else the centre crop clamped to ``ratio``. With
    ``generator`` seeded like the global RNG it returns what torchvision returns.
    """
    area = height * width
    log_lo, log_hi = _log_ratio(tuple(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
