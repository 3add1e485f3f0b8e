from pathlib import Path

import pandas as pd
import pytest
from test_agent_fixtures import QUESTIONS, KeywordSearcher, ScriptedGenerator, search_then_answer

import searchr1.evaluation.evaluate as ev
from searchr1.config import PipelineConfig
from searchr1.corpus.samples import SampleFiles
from searchr1.evaluation.results import results_table


def answer_first_title(history: str, turn: int) -> str:
    """The agent searches then answers with the first title; the baselines (no "search engine" in
    their prompt) always answer 'Ebrisca'."""
    if "search engine" not in history:
        return "<answer> Ebrisca </answer>"
    return search_then_answer(history, turn)


@pytest.fixture
def fake_models(monkeypatch):
    loaded = []

    def make(path, agent_cfg, policy_cfg, greedy=True):
        loaded.append(str(path))
        return ScriptedGenerator(answer_first_title)

    monkeypatch.setattr(ev, "make_generator", make)
    return loaded


ALL_BASELINES = PipelineConfig.model_validate({"evaluation": {"baselines_at": "all"}})


def run(tmp_path, logged, checkpoints=((0, "base-folder"), (10, "ckpt-10")), cfg=ALL_BASELINES):
    questions = {"single_hop": QUESTIONS[:5], "bridge": QUESTIONS[12:15]}
    return ev.evaluate_checkpoints(list(checkpoints), questions, KeywordSearcher(), cfg,
                                   tmp_path, log_metrics=lambda m, s: logged.append((dict(m), s)), progress=False)


def test_evaluate_writes_rollouts_results_and_metrics(tmp_path: Path, fake_models):
    logged: list = []
    summary = run(tmp_path, logged)
    assert summary["computed"] == 2 * 3 * 2 and summary["skipped"] == 0
    assert fake_models == ["base-folder", "ckpt-10"]
    assert (tmp_path / "rollouts" / "base" / "search_agent__single_hop.parquet").is_file()
    assert (tmp_path / "rollouts" / "step-000010" / "rag__bridge.parquet").is_file()
    res = pd.read_parquet(tmp_path / "results.parquet")
    assert list(res.columns) == ["checkpoint", "step", "method", "benchmark", "metric", "value", "n"]
    assert set(res["benchmark"]) == {"single_hop", "bridge", "average"}
    assert set(res["metric"]) == set(ev.METRICS)
    agent = res[(res["method"] == "search_agent") & (res["step"] == 0)].set_index(["benchmark", "metric"])["value"]
    assert agent[("single_hop", "mean_turns")] == 2.0 and agent[("single_hop", "search_calls")] == 1.0
    assert agent[("single_hop", "format_failure_rate")] == 0.0
    # macro average: each benchmark counts once
    assert agent[("average", "em")] == pytest.approx((agent[("single_hop", "em")] + agent[("bridge", "em")]) / 2)
    direct = res[(res["method"] == "direct") & (res["metric"] == "em")].set_index(["step", "benchmark"])["value"]
    assert direct[(0, "single_hop")] == 0.0 and direct[(0, "bridge")] == pytest.approx(1 / 3)  # q14: Ebrisca
    assert [s for _, s in logged] == [0, 10]
    assert "eval/search_agent/average/em" in logged[0][0] and "eval/rag/bridge/invalid_call_rate" in logged[1][0]
    assert summary["search_agent_average_em"].keys() == {0, 10}


def test_baselines_run_on_the_base_model_by_default(tmp_path: Path, fake_models):
    summary = run(tmp_path, [], cfg=PipelineConfig())
    assert summary["computed"] == 2 * 3 + 2  # base: agent + 2 baselines; step 10: agent only
    assert not (tmp_path / "rollouts" / "step-000010" / "rag__bridge.parquet").exists()


def test_resume_skips_finished_pairs(tmp_path: Path, fake_models):
    run(tmp_path, [])
    before = pd.read_parquet(tmp_path / "results.parquet")
    (tmp_path / "rollouts" / "step-000010" / "direct__bridge.parquet").unlink()
    fake_models.clear()
    summary = run(tmp_path, [])
    assert summary["computed"] == 1 and summary["skipped"] == 11
    assert fake_models == ["ckpt-10"]  # the base model is not even loaded
    pd.testing.assert_frame_equal(before, pd.read_parquet(tmp_path / "results.parquet"))
    assert not list(tmp_path.rglob("*.tmp"))


def test_suites_left_run_as_one_batch(tmp_path: Path, monkeypatch):
    """All suites of a (checkpoint, method) go to the generator together; resume still works per file."""
    gens: list[ScriptedGenerator] = []
    monkeypatch.setattr(ev, "make_generator", lambda *a, **k: gens.append(ScriptedGenerator(answer_first_title))
                        or gens[-1])
    cfg = PipelineConfig.model_validate({"evaluation": {"baselines": []}, "agent": {"batch_size": 64}})
    run(tmp_path, [], checkpoints=((0, "base-folder"),), cfg=cfg)
    assert gens[0].generate_calls[0] == list(range(5 + 3))  # single_hop's 5 and bridge's 3 in one batch
    bridge = tmp_path / "rollouts" / "base" / "search_agent__bridge.parquet"
    first = pd.read_parquet(bridge)
    bridge.unlink()
    run(tmp_path, [], checkpoints=((0, "base-folder"),), cfg=cfg)
    assert gens[1].generate_calls[0] == [0, 1, 2]  # only the missing suite
    pd.testing.assert_frame_equal(first, pd.read_parquet(bridge))


def test_bad_input_is_named(tmp_path: Path, fake_models):
    with pytest.raises(ValueError, match="duplicate"):
        run(tmp_path, [], checkpoints=((0, "a"), (0, "b")))
    with pytest.raises(ValueError, match=r"question #0 .*golden_answers"):
        ev.evaluate_checkpoints([(0, "a")], {"x": [{"id": "1", "question": "q"}]}, KeywordSearcher(),
                                PipelineConfig(), tmp_path)


def test_flashrag_format_file_goes_through_the_same_path(tmp_path: Path, fake_models, sample_data: SampleFiles):
    nq = sample_data.question_rows(4)
    out = ev.evaluate_checkpoints([(0, "base")], {"nq": nq}, KeywordSearcher(), PipelineConfig(), tmp_path,
                                  progress=False)
    res = pd.read_parquet(out["results"])
    assert set(res["benchmark"]) == {"nq", "average"} and res["n"].max() == 4


@pytest.mark.parametrize("reference", [False, True])
def test_results_table(tmp_path: Path, fake_models, reference):
    run(tmp_path, [])
    paths = results_table(tmp_path / "results.parquet", tmp_path / "report", reference=reference)
    md = paths["markdown"].read_text()
    assert paths["png"].stat().st_size > 1000
    assert "| single_hop | 5 |" in md and "| average |" in md
    assert "search_agent @ step-000010" in md and "rag @ base" in md
    assert ("Search-R1 paper" in md) == reference
    if not reference:
        assert "search_agent @ base" in md


def test_results_table_with_paper_benchmarks(tmp_path: Path):
    rows = [{"checkpoint": "step-000100", "step": 100, "method": m, "benchmark": b, "metric": "em", "value": v,
             "n": 10} for m, v in (("search_agent", 0.4), ("rag", 0.3)) for b in ("nq", "bamboogle", "average")]
    pd.DataFrame(rows).to_parquet(tmp_path / "results.parquet")
    md = results_table(tmp_path / "results.parquet", tmp_path, reference=True)["markdown"].read_text()
    assert "| nq | 10 | 40.0 | 30.0 | 39.7 | 40.6 |" in md
    assert "| average | 10 | 40.0 | 30.0 | 31.4 | 35.1 |" in md  # references averaged over the same benchmarks
    with pytest.raises(FileNotFoundError, match="evaluation stage"):
        results_table(tmp_path / "missing.parquet", tmp_path, reference=True)


def test_a_failed_evaluation_still_closes_its_engine(tmp_path: Path, monkeypatch):
    """An error inside a checkpoint's evaluation closes its generator before it propagates: an in-process vLLM
    engine left open would refuse the engine of a retry in the same process."""
    closed: list = []
    gen = ScriptedGenerator(answer_first_title)

    def boom(*a, **k):
        raise RuntimeError("search backend down")

    monkeypatch.setattr(ev, "make_generator", lambda *a, **k: gen)
    monkeypatch.setattr(ev, "close_generator", closed.append)
    monkeypatch.setattr(ev, "run_method", boom)
    with pytest.raises(RuntimeError, match="search backend down"):
        run(tmp_path, [], checkpoints=((0, "base-folder"),))
    assert [g for g in closed if g is not None] == [gen]


def test_one_engine_takes_every_checkpoint_it_can_swap_in(tmp_path: Path, monkeypatch):
    """An engine that can swap weights in place (vLLM, same architecture) serves every checkpoint: one start, then
    a load per checkpoint with work left, and one close at the end; a checkpoint it cannot take gets a new engine."""
    opened: list = []
    loads: list = []
    closed: list = []

    class Swappable(ScriptedGenerator):
        def load_weights(self, path):
            loads.append(str(path))

    def make(path, agent_cfg, policy_cfg, greedy=True):
        opened.append(str(path))
        return Swappable(answer_first_title)

    monkeypatch.setattr(ev, "make_generator", make)
    monkeypatch.setattr(ev, "can_swap", lambda gen, path: isinstance(gen, Swappable) and path != "other-arch")
    monkeypatch.setattr(ev, "close_generator", lambda gen: gen is not None and closed.append(gen))
    run(tmp_path, [], checkpoints=((0, "base-folder"), (10, "ckpt-10"), (20, "ckpt-20"), (30, "other-arch")))
    assert opened == ["base-folder", "other-arch"]
    assert loads == ["ckpt-10", "ckpt-20"]  # each once, although the baselines run on them too (baselines_at all)
    assert len(closed) == 2  # the first engine when other-arch came, the second at the end
    opened.clear(), loads.clear()
    run(tmp_path, [], checkpoints=((0, "base-folder"), (10, "ckpt-10"), (20, "ckpt-20"), (30, "other-arch")))
    assert opened == [] and loads == []  # all done: nothing loaded


@pytest.mark.parametrize(("choice", "steps"), [("all", [1, 2, 3, 4]), ("last", [4]), (2, [3, 4]), (9, [1, 2, 3, 4])])
def test_scored_checkpoints_are_all_the_last_or_the_last_n(choice, steps):
    run_ckpts = [(3, "c3"), (1, "c1"), (4, "c4"), (2, "c2")]  # in any order, as a listing may give them
    assert [s for s, _ in ev.scored_checkpoints(run_ckpts, choice)] == steps


@pytest.mark.parametrize("bad", [0, -2, "first", True, 1.5])
def test_a_bad_checkpoint_choice_is_refused_by_name(bad):
    from searchr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"evaluation\.checkpoints.*expected 'all', 'last' or a positive integer"):
        load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [f"evaluation.checkpoints={bad}"])
