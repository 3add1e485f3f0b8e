"""The analysis on synthetic rollouts with a known truth: a planted relation is found, none is found
where there is none, and a relation that is only training progress is told apart from reflection."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from searchr1.agent.trace import write_rollouts
from searchr1.reflection import stats
from searchr1.reflection.analysis import analyse
from searchr1.reflection.config import ReflectionConfig
from searchr1.reflection.load import AnalysisInputError

BENCHMARKS = ("single_hop", "bridge")
REFLECTIVE = "<think>The passage gives 1954. Wait, let me re-verify the second document.</think>"
PLAIN = "<think>The passage gives 1954.</think>"
RETRIEVED = "Doc 1(Title: Wait Until Dark) On second thought, upon closer inspection, the waiter..."


def rollout(ckpt: str, step: int, bench: str, i: int, reflective: bool, correct: bool, method="search_agent"):
    segments = [
        {"role": "assistant", "text": '<tool_call>{"name": "search", "arguments": {"query_list": ["q"]}}</tool_call>'},
        {"role": "tool", "text": f"<tool_response>{RETRIEVED}</tool_response>"},  # never counts
        {"role": "assistant",
         "text": (REFLECTIVE if reflective else PLAIN) + f"<answer>{'a' if correct else 'b'}</answer>"},
    ]
    return {"checkpoint": ckpt, "step": step, "method": method, "benchmark": bench, "question_id": f"{bench}-{i}",
            "question": f"When was thing {i} founded?", "golden_answers": ["a"], "prediction": "a" if correct else "b",
            "em": float(correct), "f1": float(correct), "contains": float(correct), "turns": 2, "search_calls": 1,
            "invalid_calls": 0, "queries": ["q"], "doc_ids": ["1"], "segments": segments,
            "response": "".join(s["text"] for s in segments), "gen_tokens": 40, "stop_reason": "answer"}


def make_run(root, kind: str, n_ckpt: int = 10, per_bench: int = 150, seed: int = 0, train_steps: int = 0,
             with_results: bool = True):
    """kind: 'planted' (EM depends on reflecting; ratio varies independently of step),
    'none' (ratio and score independent), 'progress' (both rise with step, EM independent of reflecting)."""
    rng = np.random.default_rng(seed)
    eval_dir, train_dir = root / "eval", root / "train"
    results = []
    for k in range(n_ckpt):
        step = 10 * k
        ckpt = "base" if k == 0 else f"step-{step:06d}"
        if kind == "planted":
            p_refl, em_of = rng.uniform(0.05, 0.9), (lambda r: 0.15 + 0.5 * r)
        elif kind == "none":
            q = rng.uniform(0.1, 0.6)
            p_refl, em_of = rng.uniform(0.05, 0.9), (lambda r, q=q: q)
        else:
            p_refl, em_of = 0.05 + 0.08 * k, (lambda r, k=k: 0.1 + 0.06 * k)
        for bench in BENCHMARKS:
            rows = []
            for i in range(per_bench):
                r = bool(rng.random() < p_refl)
                rows.append(rollout(ckpt, step, bench, i, r, bool(rng.random() < em_of(r))))
            write_rollouts(rows, eval_dir / "rollouts" / ckpt / f"search_agent__{bench}.parquet")
            # a baseline that must be ignored: always "reflective", always right
            write_rollouts([rollout(ckpt, step, bench, i, True, True, "rag") for i in range(20)],
                           eval_dir / "rollouts" / ckpt / f"rag__{bench}.parquet")
            em = float(np.mean([r["em"] for r in rows]))
            results.append({"checkpoint": ckpt, "step": step, "method": "search_agent", "benchmark": bench,
                            "metric": "em", "value": em, "n": per_bench})
        bench_em = [r["value"] for r in results if r["checkpoint"] == ckpt]
        results.append({"checkpoint": ckpt, "step": step, "method": "search_agent", "benchmark": "average",
                        "metric": "em", "value": float(np.mean(bench_em)), "n": per_bench * len(BENCHMARKS)})
    if with_results:
        pd.DataFrame(results).to_parquet(eval_dir / "results.parquet")
    for s in range(1, train_steps + 1):
        rows = [rollout("train", s, "train", i, bool(rng.random() < s / train_steps), bool(rng.random() < 0.3))
                for i in range(16)]
        write_rollouts(rows, train_dir / "rollouts" / f"step-{s:06d}.parquet")
    return eval_dir, (train_dir if train_steps else None)


CFG = ReflectionConfig(bootstrap_samples=500)


def test_planted_relation_is_recovered(tmp_path):
    eval_dir, train_dir = make_run(tmp_path, "planted", train_steps=6)
    logged = []
    summary = analyse(eval_dir, train_dir, CFG, tmp_path / "out", log_metrics=lambda m, s=None: logged.append((m, s)))
    res = json.loads((tmp_path / "out" / "analysis.json").read_text())
    a = res["statistics"]["across_checkpoints"]
    assert a["n"] == 10
    assert a["pearson_r"] > 0.8 and a["pearson_p"] < 0.01 and a["pearson_ci"][0] > 0.3
    assert a["spearman_rho"] > 0.7 and a["conclusive"] and a["verdict"].startswith("strong positive")
    assert res["statistics"]["partial_step"]["p"] < 0.01      # not explained by training progress
    w = res["statistics"]["within_checkpoint"]
    assert 0.4 < w["em_diff"] < 0.6 and w["p"] < 1e-6           # planted +0.5 EM for reflective rollouts
    assert w["n_reflective"] + w["n_other"] == 10 * 2 * 150     # the rag baseline is not analysed
    # the retrieved text always holds phrases; only the model's reflective turns count
    cp = pd.read_parquet(tmp_path / "out" / "checkpoints.parquet")
    assert cp["ratio"].min() < 0.2 and cp["ratio"].max() > 0.7
    assert set(cp["checkpoint"]) >= {"base", "step-000090"}
    assert summary["n_checkpoints"] == 10 and summary["pearson_r"] == pytest.approx(a["pearson_r"])
    for name in ("ratio_vs_score.png", "ratio_score_over_steps.png", "phrase_frequency.png", "analysis.md"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    tb = pd.read_parquet(tmp_path / "out" / "training_step_benchmarks.parquet")
    assert len(tb) == 6 and set(tb["benchmark"]) == {"train"} and tb["n"].sum() == 6 * 16
    md = (tmp_path / "out" / "analysis.md").read_text()
    assert "### Per training step" in md
    assert "| 1 | 16 | " in md  # step and rollout count as integers, not "1.000 | 16.000"
    freq = pd.read_parquet(tmp_path / "out" / "phrase_frequency_train.parquet")
    assert set(freq["phrase"]) == {"wait", "let me re-verify"}
    assert res["examples"]
    assert all("wait" in e["passage"].lower() or "re-verify" in e["passage"] for e in res["examples"])
    assert {e["correct"] for e in res["examples"]} == {True, False}
    md = (tmp_path / "out" / "analysis.md").read_text()
    assert "Typical self-verification passages" in md
    assert "\\<think\\>" in md and "<think>" not in md  # model text is quoted literally, never as markup
    assert any(s == 90 and "reflection/ratio" in m for m, s in logged)
    assert any(s is None and "reflection/pearson_r" in m for m, s in logged)
    json.dumps(summary)  # JSON-able


def test_the_same_rollouts_in_another_folder_give_the_same_analysis_bytes(tmp_path):
    # `searchr1 fingerprints --compare` holds two runs to the same bytes wherever their checkouts lie
    written = []
    for root in (tmp_path / "one", tmp_path / "elsewhere" / "two"):
        eval_dir, train_dir = make_run(root, "none", n_ckpt=4, per_bench=20, seed=3, train_steps=2)
        analyse(eval_dir, train_dir, CFG, root / "out")
        written.append((root / "out" / "analysis.json").read_bytes())
    assert written[0] == written[1]
    assert str(tmp_path) not in written[0].decode()
    inputs = json.loads(written[0])["inputs"]
    assert (tmp_path / "one" / "out" / inputs["eval_dir"]).resolve() == (tmp_path / "one" / "eval").resolve()


def test_no_relation_finds_nothing(tmp_path):
    eval_dir, _ = make_run(tmp_path, "none", seed=1)
    analyse(eval_dir, None, CFG, tmp_path / "out")
    s = json.loads((tmp_path / "out" / "analysis.json").read_text())["statistics"]
    a = s["across_checkpoints"]
    assert a["pearson_p"] > 0.05 and not a["conclusive"] and a["verdict"].startswith("no clear relation")
    assert a["pearson_ci"][0] < 0 < a["pearson_ci"][1]
    assert abs(s["within_checkpoint"]["em_diff"]) < 0.05 and s["within_checkpoint"]["p"] > 0.05


def test_training_progress_is_not_mistaken_for_reflection(tmp_path):
    eval_dir, _ = make_run(tmp_path, "progress", seed=2)
    analyse(eval_dir, None, CFG, tmp_path / "out")
    s = json.loads((tmp_path / "out" / "analysis.json").read_text())["statistics"]
    assert s["across_checkpoints"]["pearson_r"] > 0.9        # the naive correlation is strong...
    assert s["partial_step"]["p"] > 0.05                     # ...but nothing is left once step is controlled
    assert s["within_checkpoint"]["p"] > 0.05                # and reflecting does not help within a checkpoint


def test_small_n_is_said_plainly(tmp_path):
    eval_dir, _ = make_run(tmp_path, "planted", n_ckpt=3, per_bench=30, with_results=False)
    summary = analyse(eval_dir, None, CFG, tmp_path / "out")
    assert summary["n_checkpoints"] == 3
    assert "too few checkpoints to conclude" in summary["verdict"]
    md = (tmp_path / "out" / "analysis.md").read_text()
    assert "too few checkpoints to conclude" in md
    # the threshold is a setting
    lowered = analyse(eval_dir, None, ReflectionConfig(bootstrap_samples=200, min_points=3), tmp_path / "out3")
    assert "too few" not in lowered["verdict"]


def test_missing_rollouts_are_named(tmp_path):
    (tmp_path / "eval" / "rollouts").mkdir(parents=True)
    with pytest.raises(AnalysisInputError, match="no search_agent rollouts"):
        analyse(tmp_path / "eval", None, CFG, tmp_path / "out")


def test_correlate_edge_cases():
    assert stats.correlate([1, 2], [1, 2])["verdict"].startswith("no correlation can be computed (only 2")
    assert "does not vary" in stats.correlate([1, 1, 1, 1, 1], [1, 2, 3, 4, 5])["verdict"]
    c = stats.correlate([0.1, 0.2, 0.3, math.nan, 0.5, 0.6], [1, 2, 3, 4, 5, 7])
    assert c["n"] == 5 and c["pearson_r"] > 0.95
    p = stats.partial_correlation([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert p["r"] is None and "explains" in p["verdict"]


def test_pooled_em_difference_matches_a_hand_computed_table():
    df = pd.DataFrame({"checkpoint": ["c"] * 20, "benchmark": ["b"] * 20,
                       "reflective": [True] * 10 + [False] * 10,
                       "em": [1.0] * 8 + [0.0] * 2 + [1.0] * 3 + [0.0] * 7})
    t = stats.em_by_reflection(df)
    assert t.loc[0, "em_reflective"] == 0.8 and t.loc[0, "em_other"] == 0.3 and t.loc[0, "n_reflective"] == 10
    pooled = stats.pooled_em_difference(t)
    assert pooled["em_diff"] == pytest.approx(0.5)
    assert pooled["odds_ratio"] == pytest.approx((8 * 7) / (2 * 3))
    assert 0.01 < pooled["p"] < 0.1  # continuity-corrected CMH on a 20-rollout table


def test_the_rl_trajectory_leaves_out_the_base_only_after_a_warm_start():
    """The base (never answers in the tiny world: EM 0, ratio 0) is a point of format failure beside the
    warm-started policy RL starts from; the trajectory statistic drops it there, and only there."""
    cp = pd.DataFrame({"checkpoint": ["base", "warm-start", "step-000001", "step-000002", "step-000003"],
                       "step": [0, 0, 1, 2, 3], "ratio": [0.0, 0.9, 0.6, 0.3, 0.1],
                       "score": [0.0, 0.30, 0.34, 0.38, 0.41], "phrases_per_1k": [0.0, 9, 6, 3, 1]})
    assert list(stats.rl_trajectory(cp)["checkpoint"]) == ["warm-start", "step-000001", "step-000002", "step-000003"]
    assert len(stats.rl_trajectory(cp[cp["checkpoint"] != "warm-start"])) == 4  # no warm start: base stays
    empty = stats.em_by_reflection(pd.DataFrame(columns=["checkpoint", "benchmark", "reflective", "em"]))
    s = stats.relations(cp, pd.DataFrame(columns=["benchmark", "ratio", "score"]), empty, None,
                        bootstrap_samples=200, min_n=3)
    assert s["across_checkpoints"]["n"] == 5 and s["across_rl_checkpoints"]["n"] == 4
    assert s["across_rl_checkpoints"]["pearson_r"] < -0.9 < s["across_checkpoints"]["pearson_r"]
    assert "RL checkpoints" in s["across_rl_checkpoints"]["verdict"]
    no_warm = stats.relations(cp[cp["checkpoint"] != "warm-start"], pd.DataFrame(columns=["benchmark", "ratio",
                              "score"]), empty, None, bootstrap_samples=200, min_n=3)
    assert "across_rl_checkpoints" not in no_warm  # the same points as across_checkpoints: not repeated


def test_over_steps_plot_joins_the_rl_trajectory_and_draws_the_base_apart(tmp_path, monkeypatch):
    """Base and warm start both sit at step 0: the checkpoints' line starts at the warm start (no vertical
    segment from the base), and the base is its own marker."""
    from matplotlib.axes import Axes

    from searchr1.reflection import plots

    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, *a, **k: drawn.append((list(x), list(y), k.get("label")))
                        or real(ax, x, y, *a, **k))
    cps = pd.DataFrame({"checkpoint": ["base", "warm-start", "step-000001", "step-000002"], "step": [0, 0, 1, 2],
                        "ratio": [0.0, 0.3, 0.2, 0.1], "score": [0.0, 0.4, 0.45, 0.5]})
    assert plots.plot_over_steps(cps, None, tmp_path / "over.png").stat().st_size > 0
    line = [d for d in drawn if d[2] == "evaluated checkpoints: average EM"]
    assert line == [([0, 1, 2], [0.4, 0.45, 0.5], "evaluated checkpoints: average EM")]
    assert ([0], [0.0], "base (before the warm start)") in drawn
    drawn.clear()  # without a warm start the base is where RL starts, on the line
    plots.plot_over_steps(cps[cps.checkpoint != "warm-start"], None, tmp_path / "over2.png")
    assert [d for d in drawn if d[2] == "evaluated checkpoints: average EM"] == [
        ([0, 1, 2], [0.0, 0.45, 0.5], "evaluated checkpoints: average EM")]
    assert not [d for d in drawn if d[2] and "before" in d[2]]


def test_the_step_partial_over_all_checkpoints_is_qualified_when_base_and_warm_start_share_step_0(tmp_path):
    """With a warm start, base and warm start both sit at step 0: the partial on step over every checkpoint then
    mostly measures the gap between those two, and the verdict says so (the RL-trajectory line controls for step)."""
    from searchr1.reflection.render import analysis_markdown

    eval_dir, _ = make_run(tmp_path, "none", n_ckpt=4, per_bench=20)
    analyse(eval_dir, None, CFG, tmp_path / "out")
    res = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert "share step 0" not in analysis_markdown(res)  # no warm start: no RL-trajectory line, nothing to qualify
    s = res["statistics"]
    s["across_rl_checkpoints"], s["across_rl_checkpoints_partial"] = s["across_checkpoints"], s["partial_step"]
    line = next(x for x in analysis_markdown(res).splitlines() if x.startswith("- **Controlling for training step"))
    assert "share step 0" in line and "RL-trajectory line below" in line
