"""Content-addressed stage outputs: artifacts/cache/<stage>/<key>/, published by an atomic rename.

A stage builds into `<key>.work/` and renames it to `<key>/` only when it is complete, so a killed
stage never leaves anything that looks finished. Stages that can resume (training, evaluation)
keep their `.work` directory between attempts and skip what is already in it; the others start clean.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from searchr1.config import digest

MANIFEST = "_manifest.json"


def source_digest(modules: Iterable[ModuleType | str]) -> str:
    """Hash of the source files a stage runs, so editing the code invalidates its cache.

    A package stands for every module in it (and its data files are not code, so they do not count).
    """
    files: set[Path] = set()
    for mod in modules:
        if isinstance(mod, str):
            mod = importlib.import_module(mod)
        if hasattr(mod, "__path__"):
            for root in mod.__path__:
                files.update(Path(root).rglob("*.py"))
        else:
            files.add(Path(inspect.getfile(mod)))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, config_slice: Mapping[str, Any], upstream: Mapping[str, str], source: str) -> str:
    return digest({"stage": stage, "config": config_slice, "upstream": dict(upstream), "source": source})


@dataclass(frozen=True)
class StageOutput:
    """What a finished stage hands downstream: where it is and a small JSON summary."""

    stage: str
    key: str
    path: Path
    summary: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.stage}:{self.key}"


class StageDir:
    def __init__(self, root: Path, stage: str, key: str):
        self.stage, self.key = stage, key
        self.final = Path(root) / "cache" / stage / key
        self.work = self.final.with_name(key + ".work")

    def is_complete(self) -> bool:
        return (self.final / MANIFEST).is_file()

    def load(self) -> StageOutput:
        manifest = json.loads((self.final / MANIFEST).read_text())
        return StageOutput(self.stage, self.key, self.final, manifest.get("summary", {}))

    @contextmanager
    def building(self, resumable: bool = False) -> Iterator[Path]:
        """Yield the work directory; on success write the manifest and publish it atomically."""
        if self.work.exists() and not resumable:
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        yield self.work

    def publish(self, summary: Mapping[str, Any], inputs: Mapping[str, Any]) -> StageOutput:
        manifest = {"stage": self.stage, "key": self.key, "created": time.time(),
                    "inputs": dict(inputs), "summary": dict(summary)}
        write_json_atomic(self.work / MANIFEST, manifest)
        if self.final.exists():  # a stale, incomplete copy (no manifest) from an older layout
            shutil.rmtree(self.final)
        os.replace(self.work, self.final)
        return StageOutput(self.stage, self.key, self.final, dict(summary))


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary name next to `path`; rename it to `path` only if the block succeeds.

    Readers never see half a file, and a killed writer leaves only a dot-file that nothing reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to `path` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
