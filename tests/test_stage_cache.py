"""Stage cache keys: derived from the import closure of the stage's code and from the config values that
change its output; builders of one key take turns under an OS lock."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
from prefect.states import State

import searchr1.stage_cache as stage_cache
import tasks._stage as stage_shell
from searchr1.config import load_config
from searchr1.import_graph import closure, cycles, import_graph, imports_of, module_files, package_dirs
from searchr1.stage_cache import StageOutput
from searchr1.summaries import IndexSummary, TrainDataSummary
from tasks._stage import PipelineContext, run_stage, searcher_key
from tasks.index import index_key

PROJECT = Path(__file__).resolve().parents[1]


class FakeRun:
    """Stands in for an MLflow run: the cache logic under test never reads anything back from it."""

    def __call__(self, metrics, step=None) -> None:
        pass

    def log_params(self, params) -> None:
        pass

    def set_tags(self, tags) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_dict(self, data, name) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def end(self, status="FINISHED") -> None:
        pass


class FakeTracker:
    def __init__(self) -> None:
        self.parent = FakeRun()

    def stage(self, stage: str, key: str) -> FakeRun:
        return FakeRun()


@pytest.fixture
def sources(tmp_path, monkeypatch) -> dict[str, Path]:
    """A copy of the project's packages that the source digest reads instead of the real ones."""
    copies = {}
    for name, root in package_dirs().items():
        copies[name] = tmp_path / "src" / name
        shutil.copytree(root, copies[name], ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stage_cache, "package_dirs", lambda: copies)
    monkeypatch.setattr(stage_shell, "get_run_logger", lambda: logging.getLogger("test_stage_cache"))
    return copies


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(PROJECT / "configs" / "tiny.yaml", [f"run.artifacts_dir={tmp_path / 'artifacts'}", *overrides])


def _index_build(calls: list[str]):
    def build(work: Path, run) -> IndexSummary:
        calls.append(str(work))
        (work / "index.faiss").write_text("built")
        return IndexSummary.of({"passages": 3, "build_seconds": 0.1}, kind="flat")

    build.__module__ = "tasks.index"  # the key follows the imports of the module that defines the build
    return build


def _output(result: StageOutput | State) -> StageOutput:
    """run_stage hands a reused output to Prefect wrapped in a Cached state."""
    return result.result() if isinstance(result, State) else result


def _run_index(cfg, run_id: str, calls: list[str]) -> StageOutput:
    ctx = PipelineContext(cfg, FakeTracker(), cfg.run.artifacts_dir / "runs" / run_id)
    return _output(run_stage(ctx, "index", config_paths=[], upstream=[], build=_index_build(calls),
                             extra_key=index_key(cfg)))


def _ledger(cfg, run_id: str) -> list[dict]:
    path = cfg.run.artifacts_dir / "runs" / run_id / "stages.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _statuses(cfg, run_id: str) -> list[str]:
    return [row["status"] for row in _ledger(cfg, run_id)]


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_editing_a_module_the_stage_imports_indirectly_rebuilds_it(tmp_path, sources):
    graph = import_graph(sources)
    indirect = "searchr1.retrieval.faiss_index"
    assert indirect not in graph["tasks.index"]  # tasks.index -> retrieval.index (lazily) -> faiss_index
    assert indirect in closure(graph, ["tasks.index"])
    assert "searchr1.training.grpo" not in closure(graph, ["tasks.index"])

    cfg, calls = _cfg(tmp_path), []
    first = _run_index(cfg, "a", calls)
    assert _run_index(cfg, "b", calls).key == first.key and len(calls) == 1

    _append(sources["searchr1"] / "training" / "grpo.py", "\n# training code the index never runs\n")
    assert _run_index(cfg, "c", calls).key == first.key and len(calls) == 1

    _append(sources["searchr1"] / "retrieval" / "faiss_index.py", "\n# an edit two imports away\n")
    rebuilt = _run_index(cfg, "d", calls)
    assert rebuilt.key != first.key and len(calls) == 2 and rebuilt.path.is_dir()
    assert [_statuses(cfg, r) for r in "abcd"] == [["started", "ran"], ["cached"], ["cached"], ["started", "ran"]]


def test_values_that_do_not_change_the_index_leave_it_cached(tmp_path, sources):
    calls: list[str] = []
    first = _run_index(_cfg(tmp_path), "a", calls)
    throughput = _cfg(tmp_path, "retrieval.embedder.batch_size=7", "retrieval.embedder.num_threads=1",
                      "retrieval.topk=5", "retrieval.index.hnsw_ef_search=64", "retrieval.server.port=9999",
                      "training.grpo.steps=3")
    assert _run_index(throughput, "b", calls).key == first.key and len(calls) == 1
    assert _statuses(throughput, "b") == ["cached"]
    other = _cfg(tmp_path, "retrieval.embedder.max_length=128")
    assert _run_index(other, "c", calls).key != first.key and len(calls) == 2


def test_searching_stages_ignore_retrieval_topk_and_throughput_but_not_search_settings(tmp_path):
    base = searcher_key(_cfg(tmp_path))
    assert searcher_key(_cfg(tmp_path, "retrieval.topk=9", "retrieval.embedder.batch_size=3")) == base
    assert searcher_key(_cfg(tmp_path, "retrieval.index.ivf_nprobe=4")) != base
    assert "port" not in searcher_key(_cfg(tmp_path), server=True)["server"]


def test_a_second_builder_of_the_same_key_waits_then_reuses(tmp_path, sources, monkeypatch):
    cfg, calls = _cfg(tmp_path), []
    started, release = threading.Event(), threading.Event()

    def slow(work: Path, run) -> TrainDataSummary:
        calls.append("built")
        started.set()
        assert release.wait(30)
        (work / "rows.txt").write_text("1")
        return TrainDataSummary.of({"train_rows": 1, "val_rows": 1, "prompt_style": "tool_call",
                                    "per_benchmark": {"x": 1}})

    slow.__module__ = "tasks.train_data"
    results: dict[str, object] = {}

    def run(run_id: str) -> None:
        ctx = PipelineContext(cfg, FakeTracker(), cfg.run.artifacts_dir / "runs" / run_id)
        results[run_id] = _output(run_stage(ctx, "train-data", config_paths=["run.seed"], upstream=[], build=slow))

    # seen when the second run finds the key locked (no fixed sleep: on a loaded machine computing the
    # stage key alone can take longer than any sleep chosen here)
    blocked, lock = threading.Event(), stage_cache.StageDir.lock

    def observed_lock(self, on_wait=None):
        return lock(self, on_wait=lambda: (blocked.set(), on_wait and on_wait()))

    monkeypatch.setattr(stage_cache.StageDir, "lock", observed_lock)
    first = threading.Thread(target=run, args=("a",))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    assert blocked.wait(60) and "b" not in results  # blocked on the key's lock, not building a copy
    release.set()
    first.join(30)
    second.join(30)
    assert calls == ["built"] and results["a"] == results["b"]
    assert _statuses(cfg, "a") == ["started", "ran"] and _statuses(cfg, "b") == ["cached"]
    assert "waited_s" in _ledger(cfg, "b")[0] and "waited_s" not in _ledger(cfg, "a")[0]  # b waited, a did not
    assert not list((cfg.run.artifacts_dir / "cache" / "train-data").glob("*.work"))


def test_a_build_that_returns_the_wrong_summary_fails_and_publishes_nothing(tmp_path, sources):
    cfg = _cfg(tmp_path)

    def wrong(work: Path, run) -> dict:
        return {"passages": 3}

    wrong.__module__ = "tasks.index"
    ctx = PipelineContext(cfg, FakeTracker(), cfg.run.artifacts_dir / "runs" / "a")
    with pytest.raises(TypeError, match="index: build returned dict; expected the 'index' summary type"):
        run_stage(ctx, "index", config_paths=[], upstream=[], build=wrong)
    assert _statuses(cfg, "a") == ["started", "failed"]
    assert not list((cfg.run.artifacts_dir / "cache" / "index").glob("*/_manifest.json"))


def test_import_graph_reads_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/leaf.py", "typed.py", "other.py"):
        (pkg / name).write_text("")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import other\n"
        "if TYPE_CHECKING:\n    from pkg import typed\n"
        "def later():\n    from .sub import leaf\n    return leaf\n")
    files = module_files({"pkg": pkg})
    assert imports_of("pkg.top", files["pkg.top"], files) == {"pkg", "pkg.other", "pkg.sub", "pkg.sub.leaf"}
    assert imports_of("pkg.top", files["pkg.top"], files, module_level_only=True) == {"pkg", "pkg.other"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    with pytest.raises(KeyError, match="'tests.x' is not a first-party module"):
        closure({"pkg": set()}, ["tests.x"])


def test_the_package_has_no_import_time_cycles():
    assert cycles(import_graph(module_level_only=True)) == []
