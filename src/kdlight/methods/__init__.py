"""Distillation methods, one per file; see :mod:`kdlight.methods.base` for the API."""
