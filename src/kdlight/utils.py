"""Deprecated home of the atomic writers and the file lock: import them from :mod:`kdlight.io`."""

from __future__ import annotations

from kdlight.io import atomic_torch_save, atomic_write_json, atomic_write_text, file_lock

__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_text", "file_lock"]
