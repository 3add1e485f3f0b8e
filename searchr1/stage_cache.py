"""Content-addressed stage outputs: artifacts/cache/<stage>/<key>/, published by an atomic rename.

A stage builds into `<key>.work/` and renames it to `<key>/` only when it is complete, so a killed
stage never leaves anything that looks finished. Stages that can resume (training, evaluation)
keep their `.work` directory between attempts and skip what is already in it; the others start clean.
Builders of one key take turns through `<key>.lock`, so a second run waits for the first and reuses its output.

The key hashes the stage's config slice, its upstream keys and the source of every first-party
module its build function can import (`source_digest`). The import closure, rather than a hash of
the whole package, is deliberate: the index takes hours on wiki-18 and must not be rebuilt because a
training or report module changed, while anything it can actually run does invalidate it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchr1.import_graph import closure, import_graph, module_files, package_dirs
from searchr1.io import digest, file_lock, files_digest, write_json_atomic

MANIFEST = "_manifest.json"
# The stage shell decides whether and where a stage is built, never what is built; following it
# would make every key depend on the caching and tracking machinery instead of the stage's code.
SHELL_MODULES = ("tasks._stage", "searchr1.stage_cache")


def source_modules(roots: Iterable[str], packages: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """{module: file} of `roots` and every first-party module they import, directly or not."""
    packages = packages if packages is not None else package_dirs()
    files = module_files(packages)
    reached = closure(import_graph(packages), roots, stop=SHELL_MODULES)
    return {name: files[name] for name in reached}


def source_digest(roots: Iterable[str], packages: Mapping[str, Path] | None = None) -> str:
    """Hash of the source a stage can run, so that editing any of it invalidates the stage's cache."""
    return files_digest(source_modules(roots, packages))


def stage_key(stage: str, config_slice: Mapping[str, Any], upstream: Mapping[str, str], source: str) -> str:
    return digest({"stage": stage, "config": config_slice, "upstream": dict(upstream), "source": source})


@dataclass(frozen=True)
class StageOutput:
    """What a finished stage hands downstream: where it is and its summary (JSON, see searchr1.summaries)."""

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
        self.lock_file = self.final.with_name(key + ".lock")

    def is_complete(self) -> bool:
        return (self.final / MANIFEST).is_file()

    def load(self) -> StageOutput:
        manifest = json.loads((self.final / MANIFEST).read_text())
        return StageOutput(self.stage, self.key, self.final, manifest.get("summary", {}))

    @contextmanager
    def lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Only one process builds (or publishes) this key at a time; check `is_complete` again inside."""
        with file_lock(self.lock_file, on_wait):
            yield

    @contextmanager
    def building(self, resumable: bool = False) -> Iterator[Path]:
        """Yield the work directory (hold `lock()` around this and `publish`)."""
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
