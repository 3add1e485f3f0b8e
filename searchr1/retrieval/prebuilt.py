"""A prebuilt flat index instead of embedding the corpus: Search-R1's `PeterJinGo/wiki-18-e5-index`.

Search-R1 ships its e5-base-v2 index of wiki-18 as a hub dataset of two byte-split parts,
`part_aa` and `part_ab` (its scripts/download.py fetches exactly those), which `cat part_* >
e5_Flat.index` joins into one faiss IndexFlat with inner-product metric, row i = line i of
wiki-18.jsonl. This module gets the parts (hub or local folder), joins them in name order as `cat`
does, and checks the result before it becomes an index directory's index:

- it is a flat inner-product index with one row per corpus passage;
- a few random rows, re-embedded from their passages with `retrieval.embedder`, match the stored
  vectors (cosine >= MIN_COSINE): a corpus in another order, a filtered corpus or another
  embedder config fails here, not as silently wrong search results.

Disk: the parts stay in the huggingface_hub cache (~65 GB for wiki-18) and the joined file is a
second copy of that size in the index directory.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from searchr1.io import atomic_file
from searchr1.retrieval.passages import PassageStore

PART_GLOB = "part_*"
MIN_COSINE = 0.98  # same passage, fp16 vs fp32 and library versions: > 0.999; different passages (e5): < 0.95
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def prebuilt_parts(source: str, revision: str | None = None) -> list[Path]:
    """The files that concatenate into the index: a local joined file, or the part_* files of a folder or hub repo."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        folder = path
    elif HUB_ID.fullmatch(source):
        folder = download_parts(source, revision)
    else:
        raise FileNotFoundError(f"retrieval.index.prebuilt={source!r}: not an existing file or folder, "
                                f"nor a hub dataset id (owner/name)")
    parts = sorted(folder.glob(PART_GLOB))
    if not parts:
        raise FileNotFoundError(f"{folder}: no {PART_GLOB} files (retrieval.index.prebuilt); expected the "
                                f"byte-split parts of a faiss index, as in PeterJinGo/wiki-18-e5-index")
    return parts


def download_parts(repo_id: str, revision: str | None) -> Path:
    """The parts of a hub dataset repo, downloaded (resumable, cached) by huggingface_hub; returns the folder."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                  allow_patterns=[PART_GLOB]))


def join_parts(parts: list[Path], dest: Path) -> int:
    """Concatenate `parts` in order into `dest` (atomically: a file there is complete); returns its size."""
    with atomic_file(dest) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=64 << 20)
    return dest.stat().st_size


def read_prebuilt(path: Path, rows: int, mmap: bool = False) -> faiss.Index:
    """The joined index, checked to be flat inner-product with `rows` vectors (one per corpus passage)."""
    # memory-mapped, a 64 GB index can be split into shards without being read into RAM
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the joined prebuilt index is not a readable faiss index ({exc}); "
                         f"are all parts there?") from None
    if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{path}: prebuilt index is {type(index).__name__} (metric {index.metric_type}); "
                         f"expected a flat inner-product index")
    if index.ntotal != rows:
        raise ValueError(f"{path}: prebuilt index has {index.ntotal} vectors but the corpus has {rows} passages; "
                         f"its rows must be the corpus passages in order (Search-R1's index: all of "
                         f"wiki-18.jsonl, no max_passages, no skipped lines)")
    return index


def check_rows(index: faiss.Index, store: PassageStore, embedder: Any, count: int, seed: int = 0) -> float:
    """Re-embed `count` random passages and compare with the stored rows; returns the lowest cosine."""
    n = index.ntotal
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
    if embedder.dim != index.d:
        raise ValueError(f"prebuilt index has {index.d}-d vectors but retrieval.embedder gives {embedder.dim}-d")
    fresh = embedder.encode_passages([d["contents"] for d in store.docs(rows)])
    stored = np.stack([index.reconstruct(int(r)) for r in rows])
    cos = (fresh * stored).sum(1) / (np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1)).clip(1e-12)
    worst = int(np.argmin(cos))
    if cos[worst] < MIN_COSINE:
        raise ValueError(f"prebuilt index row {int(rows[worst])}: cosine {cos[worst]:.3f} (< {MIN_COSINE}) with its "
                         f"passage re-embedded by retrieval.embedder; the index was built from other passages "
                         f"(order, filtering) or with other embedder settings (model, prefixes, pooling)")
    return float(cos[worst])


def install_prebuilt(source: str, revision: str | None, dest: Path, store: PassageStore,
                     get_embedder: Callable[[], Any], check_count: int) -> tuple[faiss.Index, dict[str, Any]]:
    """Fetch and join the parts into `dest`, check them against the corpus; returns the index and what was done."""
    parts = prebuilt_parts(source, revision)
    size = join_parts(parts, dest)
    index = read_prebuilt(dest, len(store), mmap=True)
    info: dict[str, Any] = {"source": source, "revision": revision, "parts": [p.name for p in parts], "bytes": size}
    if check_count:
        info["check_rows"] = min(check_count, index.ntotal)
        info["check_min_cosine"] = check_rows(index, store, get_embedder(), check_count)
    return index, info
