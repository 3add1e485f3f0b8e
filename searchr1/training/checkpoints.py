"""Checkpoint folders: `<train_dir>/checkpoints/step-XXXXXX/`, each a plain HF model folder.

A checkpoint is written under a temporary name and renamed into place when complete, so a folder
named `step-*` is complete by construction; we still require the marker file written last before
the rename, so a folder copied or restored half-way is never picked either.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "checkpoint_complete.json"
_NAME = re.compile(r"^step-(\d{6,})$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints_dir(train_dir: Path) -> Path:
    return Path(train_dir) / CHECKPOINTS_DIR


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under train_dir, oldest first."""
    root = checkpoints_dir(train_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(train_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(train_dir)
    return found[-1] if found else None
