"""Resumable training: everything a loop needs to continue exactly where it stopped.

A training loop (toy teacher, sew adapter, small-CNN student) saves its state at step or epoch
boundaries: weights, optimizer, estimator, random-number states and the position. The file is written
atomically into a work directory outside every DVC output, and carries a fingerprint of the run (its
settings and inputs); a rerun after SIGKILL/SIGTERM with the same fingerprint continues from it and ends
with the same bytes as an uninterrupted run, because every random draw after the checkpoint comes from
the restored states. Loaded with weights_only=True: the state holds only tensors, numbers and strings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.storage import atomic_path

STATE_NAME = "state.pt"


def fingerprint(*parts: Any) -> str:
    """sha256 over the parts: a numpy array contributes its dtype, shape and bytes, a Path its file's
    content hash, anything else its JSON (keys sorted)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"ndarray {a.dtype.str} {a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(part, Path):
            h.update(hashlib.sha256(part.read_bytes()).hexdigest().encode() if part.is_file() else str(part).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def numpy_rng_state(rng: np.random.Generator) -> dict:
    """A Generator's state as strings and small ints (128-bit PCG64 words as decimal strings)."""
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def set_numpy_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = {"bit_generator": state["bit_generator"],
                               "state": {"state": int(state["state"]), "inc": int(state["inc"])},
                               "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]}


class Checkpointer:
    """Saves and restores a loop's state in `work_dir`; `every` says how often (in steps or epochs)."""

    def __init__(self, work_dir: str | Path, run_fingerprint: str, every: int = 1,
                 log: Callable[[str], None] = print):
        self.work_dir, self.fingerprint, self.every, self.log = Path(work_dir), run_fingerprint, every, log

    @property
    def path(self) -> Path:
        return self.work_dir / STATE_NAME

    def restore(self) -> dict | None:
        """The saved state of this run, or None (nothing saved, or saved by a run with other settings)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: start afresh rather than fail
            self.log(f"ignoring unreadable checkpoint {self.path} ({e})")
            return None
        if state.get("fingerprint") != self.fingerprint:
            self.log(f"ignoring checkpoint {self.path}: written by a run with other settings or inputs")
            return None
        self.log(f"resuming from {self.path} at {state.get('position', '?')}")
        return state

    def due(self, index: int) -> bool:
        return (index + 1) % self.every == 0

    def save(self, state: dict) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def clear(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
