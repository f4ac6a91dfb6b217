"""Lightning callbacks that kdlight adds to its runs (``conf/callbacks/default.yaml``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class RNGState(L.Callback):
    """Keep the global RNG states in every checkpoint and restore them on resume.

    Lightning restores weights, optimizer and loop counters, not the RNG, so without this a run
    resumed with ``ckpt_path=last`` draws other dropout masks than an uninterrupted run with the
    same seed. The shuffle order needs no help: it is a function of (seed, epoch) (see
    ``kdlight.data.base``). Only tensors are stored, so the checkpoint stays weights-only loadable.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])
