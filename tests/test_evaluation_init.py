"""The policy RL started from (the warm-started model) is scored as its own column at step 0."""

from pathlib import Path

import pandas as pd
import pytest
from test_agent_fixtures import QUESTIONS, KeywordSearcher
from test_evaluation import fake_models  # noqa: F401  (the fixture is used by name)

from searchr1.config import PipelineConfig
from searchr1.evaluation import evaluate as ev


def test_init_model_is_its_own_column_with_baselines(tmp_path: Path, fake_models):  # noqa: F811
    logged: list = []
    questions = {"single_hop": QUESTIONS[:3]}
    summary = ev.evaluate_checkpoints([(0, "base-folder"), (4, "ckpt-4")], questions,
                                      KeywordSearcher(), PipelineConfig(), tmp_path,
                                      log_metrics=lambda m, s: logged.append((dict(m), s)), progress=False,
                                      init=("warm-start", "ws-folder"))
    assert fake_models == ["base-folder", "ws-folder", "ckpt-4"]  # base, then the RL start, then the steps
    assert summary["checkpoints"] == ["base", "warm-start", "step-000004"]
    res = pd.read_parquet(tmp_path / "results.parquet")
    ws = res[res["checkpoint"] == "warm-start"]
    assert set(ws["step"]) == {0} and set(ws["method"]) == {"search_agent", "direct", "rag"}  # baselines too
    assert summary["search_agent_average_em"].keys() == {0, 4}  # steps only: the base keeps step 0
    assert [s for _, s in logged] == [0, 0, 4]
    assert "eval-warm-start/search_agent/average/em" in logged[1][0]  # no clash with the base's series
    with pytest.raises(ValueError, match="collides"):
        ev.evaluate_checkpoints([(0, "b")], questions, None, PipelineConfig(), tmp_path / "x", init=("base", "w"))


def test_results_table_keeps_base_and_warm_start_apart(tmp_path: Path, fake_models):  # noqa: F811
    """Both are step 0: the table's columns must be the checkpoint's own numbers, not the first at that step."""
    from searchr1.evaluation.results import results_table

    ev.evaluate_checkpoints([(0, "base-folder"), (4, "ckpt-4")], {"single_hop": QUESTIONS[:3]}, KeywordSearcher(),
                            PipelineConfig(), tmp_path, progress=False, init=("warm-start", "ws-folder"))
    res = pd.read_parquet(tmp_path / "results.parquet")
    res.loc[(res["checkpoint"] == "warm-start") & (res["method"] == "rag") & (res["metric"] == "em"), "value"] = 0.125
    res.to_parquet(tmp_path / "results.parquet", index=False)
    md = results_table(tmp_path / "results.parquet", tmp_path, reference=False)["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for label in ("search_agent @ base", "search_agent @ warm-start", "rag @ base", "rag @ warm-start"):
        assert label in cols, label
    avg = next(line for line in md.splitlines() if line.startswith("| average"))
    values = dict(zip(cols, (v.strip() for v in avg.strip("|").split("|")), strict=True))
    assert values["rag @ warm-start"] == "12.5" and values["rag @ base"] != "12.5"
    assert "| warm-start |" in md  # its own behaviour row


def test_baselines_at_init_run_only_on_the_policy_rl_starts_from(tmp_path: Path, fake_models):  # noqa: F811
    cfg = PipelineConfig.model_validate({"evaluation": {"baselines_at": "init"}})
    ev.evaluate_checkpoints([(0, "base-folder"), (4, "ckpt-4")], {"single_hop": QUESTIONS[:3]}, KeywordSearcher(),
                            cfg, tmp_path, progress=False, init=("warm-start", "ws-folder"))
    res = pd.read_parquet(tmp_path / "results.parquet")
    methods = {c: set(g["method"]) for c, g in res.groupby("checkpoint")}
    assert methods == {"base": {"search_agent"}, "warm-start": {"search_agent", "direct", "rag"},
                       "step-000004": {"search_agent"}}
    # without a warm start the RL start is the base model, and it keeps its baselines
    ev.evaluate_checkpoints([(0, "base-folder")], {"single_hop": QUESTIONS[:3]}, KeywordSearcher(), cfg,
                            tmp_path / "no-init", progress=False)
    assert set(pd.read_parquet(tmp_path / "no-init" / "results.parquet")["method"]) == {"search_agent", "direct",
                                                                                       "rag"}
    # the table still opens with the base, although only the warm start's rows hold baselines
    from searchr1.evaluation.results import results_table

    md = results_table(tmp_path / "results.parquet", tmp_path, reference=False)["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| benchmark"))
    assert [c.strip() for c in header.strip("|").split("|")][2:5] == [
        "search_agent @ base", "search_agent @ warm-start", "search_agent @ step-000004"]


def test_each_engine_opens_after_the_freed_heap_is_returned(tmp_path: Path, fake_models, monkeypatch):  # noqa: F811
    """The trainers' freed heap is handed back before every checkpoint's engine (an engine opened over it took 8x
    longer): the trim comes right before each model is loaded, and not for a checkpoint already evaluated."""
    events: list[str] = []
    monkeypatch.setattr(ev, "return_freed_memory", lambda: events.append("trim"))
    opened = ev.make_generator

    def make(path, *args, **kwargs):
        events.append(str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(ev, "make_generator", make)
    ev.evaluate_checkpoints([(0, "base-folder"), (4, "ckpt-4")], {"single_hop": QUESTIONS[:3]}, KeywordSearcher(),
                            PipelineConfig(), tmp_path, progress=False)
    assert events == ["trim", "base-folder", "trim", "ckpt-4"]
    events.clear()
    ev.evaluate_checkpoints([(0, "base-folder"), (4, "ckpt-4")], {"single_hop": QUESTIONS[:3]}, KeywordSearcher(),
                            PipelineConfig(), tmp_path, progress=False)
    assert events == []  # resumed: nothing left to generate, no engine and no trim
