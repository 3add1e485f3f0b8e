"""The run report: Markdown + self-contained HTML from stage summaries, results, analysis and metrics."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from test_reflection_analysis import make_run  # noqa: I001  (same tests folder)

from searchr1.config import PipelineConfig
from searchr1.evaluation.hops import HopSection
from searchr1.reflection.analysis import analyse
from searchr1.reflection.config import ReflectionConfig
from searchr1.report import build_report, deviations, seed_claim, warm_start_used
from searchr1.summaries import (
    CorpusSummary,
    EvaluateSummary,
    IndexSummary,
    QuestionsSummary,
    ReflectionSummary,
    SummaryError,
    TrainSummary,
    WarmStartSummary,
    read_summary,
)


def _tiny_config() -> dict:
    cfg = PipelineConfig().model_dump(mode="json")
    cfg["training"]["warm_start"]["enabled"] = True
    return cfg


def _train(warm_started: bool) -> TrainSummary:
    return TrainSummary.of({"steps": 20, "seconds": 1.5}, engine="trl", init="model", warm_started=warm_started,
                           last_step=20, checkpoints=["checkpoints/step-000020"])


def _stages() -> dict:
    """One summary per stage, as the stage tasks build them from what the library reports."""
    return {
        "corpus": CorpusSummary.of({"source": "synthetic", "passages": 1234, "shards": 1, "skipped_lines": 0,
                                    "entities": 740}),
        "questions": QuestionsSummary.of({"source": "synthetic", "counts": {"single_hop/test": 40},
                                          "questions": 40, "skipped_lines": 0}),
        "index": IndexSummary.of({"passages": 1234.0, "build_seconds": 2.5, "dims": 384.0}, kind="flat"),
        "warm-start": WarmStartSummary.of({"steps": 12, "traces": 96, "loss_last": 0.4}),
        "train": _train(True),
        "evaluate": EvaluateSummary.of({"checkpoints": ["base", "step-000050"], "methods": ["search_agent"],
                                        "benchmarks": ["single_hop"], "search_agent_average_em": {0: 0.3}}),
        "reflection": ReflectionSummary.of({"n_checkpoints": 6, "verdict": "strong", "figures": []}),
    }


def _inputs(tmp_path):
    eval_dir, train_dir = make_run(tmp_path, "planted", n_ckpt=6, per_bench=40, train_steps=4)
    analysis_dir = tmp_path / "analysis"
    analyse(eval_dir, train_dir, ReflectionConfig(bootstrap_samples=200), analysis_dir)
    rows = []
    for ckpt, step in (("base", 0), ("step-000050", 50)):
        for method, base in (("search_agent", 0.3), ("rag", 0.2), ("direct", 0.05)):
            for bench in ("single_hop", "bridge", "average"):
                rows.append({"checkpoint": ckpt, "step": step, "method": method, "benchmark": bench,
                             "metric": "em", "value": base + step / 500, "n": 40})
    pd.DataFrame(rows).to_parquet(eval_dir / "results.parquet")  # replaces the fixture's search-agent-only one
    (eval_dir / "results.md").write_text("| benchmark | this run | paper | seed |\n|---|---|---|---|\n"
                                         "| nq | 0.10 | 39.7 | 40.6 |\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [1, 2])
    fig.savefig(eval_dir / "results.png")
    plt.close(fig)
    steps = np.arange(1, 21)
    metrics = pd.DataFrame({"step": steps, "reward/mean": steps / 40, "train/em": steps / 50,
                            "loss": 1 / steps, "reflection/ratio": steps / 30})
    return eval_dir, analysis_dir, metrics


def test_report_has_every_section_and_embeds_figures(tmp_path):
    eval_dir, analysis_dir, metrics = _inputs(tmp_path)
    out = tmp_path / "report"
    cfg = _tiny_config()
    cfg["training"]["warm_start"]["verify_rate"] = 0.5
    cfg["training"]["warm_start"]["skill_weights"] = {"compositional": 2}
    cfg["training"]["warm_start"].update(epochs=3, learning_rate=1e-4)
    paths = build_report(out, config=cfg, stages=_stages(), results_md=eval_dir / "results.md",
                         results_png=eval_dir / "results.png", analysis_dir=analysis_dir, train_metrics=metrics,
                         mlflow_links={"pipeline run": "http://127.0.0.1:5000/#/experiments/1/runs/abc"},
                         hops=HopSection("| checkpoint | hops |",
                                         "searches per question for 1 / 2 hops: 1.00 / 2.00 at warm-start", None))
    md = paths["md"].read_text()
    assert "## Searches against the hops each question needs\n\n| checkpoint | hops |" in md
    assert "- **Hops:** searches per question for 1 / 2 hops: 1.00 / 2.00 at warm-start.\n" in md
    for heading in ("## Summary", "## Deviations from Search-R1", "## Configuration", "## Corpus, questions and index",
                    "## Training", "## Results", "## Baselines", "## Reflective-phrase analysis", "## MLflow runs",
                    "## Appendix: full configuration"):
        assert heading in md, heading
    assert "Traces dealt per round of the suites: compositional x2 (the others x1)." in md
    assert "Supervised warm start" in md and "SmolLM2-135M-Instruct" in md and "fictional world" in md
    assert "worked search traces (3 epochs at learning rate 0.0001), because" in md
    assert "| training.warm\\_start.epochs | 3 |" in md
    assert "fictional world (1,234 passages)" in md     # read from the typed corpus summary
    assert "| dims | 384 |" in md                       # extra facts a library reported ride along
    assert "| nq | 0.10 | 39.7 | 40.6 |" in md          # the results table as produced by evaluation
    verdict = json.loads((analysis_dir / "analysis.json").read_text())["statistics"]["across_checkpoints"]["verdict"]
    assert verdict.startswith("strong positive relation") and verdict in md  # the analysis verdict
    claim = re.search(r"\*\*On the seed's claim:\*\* (.*)", md).group(1)  # one sentence, from the same numbers
    assert "ratio fell from 0.55 (base)" in claim and "them supports the claim (r = +" in claim
    assert "planted by the warm start (verify rate 0.50)" in claim
    assert "http://127.0.0.1:5000/#/experiments/1/runs/abc" in md
    assert re.search(r"\| rag \| base \|", md)          # baselines from results.parquet
    for png in ("training_curves.png", "results.png", "reflection_ratio_vs_score.png"):
        assert (out / png).is_file() and f"]({png})" in md

    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert 'src="data:image/png;base64,' in page
    assert not re.search(r'src="[^"]+\.png"', page)  # every image inlined: the page stands alone
    first = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_claim_follows_the_statistics_not_a_fixed_text():
    analysis = {"tables": {"checkpoints": [
        {"checkpoint": "step-000002", "step": 2, "ratio": 0.3, "score": 0.4},
        {"checkpoint": "base", "step": 0, "ratio": 0.0, "score": 0.1}]},
        "statistics": {"across_checkpoints": {"conclusive": False, "pearson_r": None},
                       "partial_step": {"r": None}, "within_checkpoint": {"em_diff": -0.05, "p": 0.5}}}
    cfg = PipelineConfig().model_dump(mode="json")  # no warm start: the paper's setting
    claim = seed_claim(analysis, cfg)
    assert "rose from 0.00 (base) to 0.30 (step-000002) over 2 evaluated checkpoints of the RL trajectory" in claim
    assert "neither supports nor contradicts the claim;" in claim and "-5.0 EM points" in claim
    assert "co-movement" in claim and "warm start" not in claim
    analysis["statistics"]["across_checkpoints"] = {"conclusive": True, "pearson_r": -0.9, "confidence": 0.95,
                                                    "pearson_ci": [-0.99, -0.5]}
    assert "contradicts the claim (r = -0.90, 95% CI [-0.99, -0.50])" in seed_claim(analysis, cfg)
    assert seed_claim({"tables": {"checkpoints": []}, "statistics": {}}, cfg) is None
    analysis["tables"]["checkpoints"].append({"checkpoint": "warm-start", "step": 0, "ratio": 0.9, "score": 0.3})
    assert "fell from 0.90 (warm-start) to 0.30 (step-000002) over 3 evaluated" in seed_claim(analysis, cfg)
    # with a warm start the analysis judges the RL trajectory (base left out): the sentence takes that relation
    analysis["statistics"]["across_rl_checkpoints"] = {"n": 2, "conclusive": False, "pearson_r": None}
    analysis["statistics"]["across_rl_checkpoints_partial"] = {"r": None}
    claim = seed_claim(analysis, cfg)
    assert "over 2 evaluated checkpoints of the RL trajectory" in claim and "neither supports" in claim


def test_report_without_optional_inputs(tmp_path):
    cfg = PipelineConfig().model_dump(mode="json")
    cfg["corpus"]["source"] = "wiki18"
    cfg["questions"]["source"] = "flashrag"
    cfg["policy"]["model"] = "Qwen/Qwen2.5-3B-Instruct"
    cfg["training"]["engine"] = "verl"
    cfg["retrieval"]["embedder"]["model"] = "intfloat/e5-base-v2"
    cfg["training"]["grpo"]["top_p"] = 0.95  # as configs/paper.yaml
    paths = build_report(tmp_path / "r", config=cfg, stages={"train": _train(False)}, results_md=None,
                         results_png=None, analysis_dir=None, train_metrics=None, mlflow_links={})
    md = paths["md"].read_text()
    assert "## Deviations" not in md  # the paper setup deviates in nothing the report knows about
    assert "did not run" in md and "No training metrics" in md
    assert paths["html"].is_file()


@pytest.mark.parametrize("warm_started, enabled", [(True, False), (False, True), (True, True), (False, False)])
def test_warm_start_is_what_the_train_stage_says(warm_started, enabled):
    cfg = {"training": {"warm_start": {"enabled": enabled}}}
    stages = {"train": _train(warm_started)}
    assert warm_start_used(cfg, stages) is warm_started
    assert any("warm start" in d for d in deviations(cfg, stages)) is warm_started


@pytest.mark.parametrize("stages, enabled, expected", [({}, True, True), ({}, False, False),
                                                      ({"warm-start": WarmStartSummary.of({"steps": 3})}, False, True)])
def test_warm_start_before_training_ran(stages, enabled, expected):
    assert warm_start_used({"training": {"warm_start": {"enabled": enabled}}}, stages) is expected


def test_deviations_name_the_sampling_and_the_warm_start_check_rate():
    stages = {"warm-start": WarmStartSummary.of({"steps": 3, "traces": 96, "verify_rate": 0.5})}
    cfg = {"training": {"warm_start": {"enabled": True}, "grpo": {"temperature": 0.7, "kl_coef": 0.0}}}
    devs = deviations(cfg, stages)
    assert any("50% of them check the last hop" in d and "learnt" not in d for d in devs)
    learnt = {"warm-start": WarmStartSummary.of({"steps": 3, "traces": 96, "verify_rate": 0.5,
                                                 "check_probability": 0.0134})}
    assert any("probability 1.3% of opening that turn" in d for d in deviations(cfg, learnt))
    sampling = [d for d in devs if d.startswith("**GRPO sampling")]
    assert sampling == ["**GRPO sampling and loss:** temperature 0.7 (Search-R1: 1), KL coefficient 0 "
                        "(Search-R1: 0.001)."]  # a key the config lacks is not called a deviation
    same = {"training": {"grpo": {"temperature": 1.0, "top_p": 0.95, "kl_coef": 0.001}}}
    assert not any(d.startswith(("**GRPO sampling", "**Dynamic")) for d in deviations(same, {}))
    refilled = {"training": {"grpo": {"refill_rounds": 2}}}
    assert [d for d in deviations(refilled, {}) if d.startswith("**Dynamic")][0].startswith(
        "**Dynamic sampling (DAPO):** up to 2 draw(s)")


@pytest.mark.parametrize("grpo,expected", [
    ({"warmup_ratio": 0.285}, None),
    ({"warmup_ratio": 0.285, "warmup_first_step_moves": True},
     "**Learning-rate warmup:** Search-R1's 0.285 of the steps (2 of 5), the ramp one step on: the first step "
     "trains at 1/3 of the rate, where verl's ramp trains it at 0 (over a short run, a checkpoint equal to its "
     "start)."),
    ({}, "**Learning-rate warmup:** none (Search-R1: 0.285 of the steps)."),
    ({"warmup_first_step_moves": True}, "**Learning-rate warmup:** none (Search-R1: 0.285 of the steps)."),
    ({"warmup_ratio": 0.5, "warmup_first_step_moves": True},
     "**Learning-rate warmup:** 0.5 of the steps (3 of 5) (Search-R1: 0.285), the ramp one step on: the first step "
     "trains at 1/4 of the rate, where verl's ramp trains it at 0 (over a short run, a checkpoint equal to its "
     "start)."),
])
def test_the_trl_warmup_is_a_deviation_unless_it_is_search_r1s(grpo, expected):
    cfg = {"training": {"engine": "trl", "grpo": {"steps": 5, **grpo}}}
    found = [d for d in deviations(cfg, {}) if d.startswith("**Learning-rate warmup")]
    assert found == ([expected] if expected else [])
    assert not any("warmup" in d for d in deviations({"training": {"engine": "verl", "grpo": grpo}}, {}))


@pytest.mark.parametrize("grpo,expected", [
    ({}, None),
    ({"format_reward": 0.0, "invalid_call_penalty": 0.0}, None),
    ({"invalid_call_penalty": 0.2}, "**Reward:** exact match of the last answer, as Search-R1's, except that a right "
     "answer whose text holds a malformed search call scores 0.8 (the right-answer branch of Search-R1's "
     "`qa_em_format`, with malformed calls as the invalid format)."),
    ({"format_reward": 0.1}, "**Reward:** exact match of the last answer, as Search-R1's, except that a wrong but "
     "present answer scores 0.1."),
])
def test_a_reward_other_than_exact_match_is_a_deviation(grpo, expected):
    for engine in ("trl", "verl"):
        found = [d for d in deviations({"training": {"engine": engine, "grpo": grpo}}, {}) if d.startswith("**Reward")]
        assert found == ([expected] if expected else [])


def test_summaries_round_trip_through_the_manifest_json():
    for name, summary in _stages().items():
        again = read_summary(name, json.loads(json.dumps(summary.to_json())))
        assert again == summary and type(again) is type(summary)
    assert read_summary("evaluate", _stages()["evaluate"].to_json()).search_agent_average_em == {0: 0.3}


def test_a_summary_missing_a_declared_field_names_the_stage_and_field():
    with pytest.raises(SummaryError, match=r"train stage summary .*'warm_started': Field required"):
        TrainSummary.of({"steps": 3}, engine="trl", init="m", last_step=3, checkpoints=[])
    with pytest.raises(SummaryError, match="no summary type for stage 'nope'"):
        read_summary("nope", {})


def test_html_never_passes_markup_through(tmp_path):
    from searchr1.report import render_html

    page = render_html("Model said <script>alert(1)</script> and <think>hmm</think>", tmp_path, "t")
    body = page.split("<body>", 1)[1]
    assert "<script>" not in body and "&lt;script&gt;" in body and "<think>" not in body


def test_intervals_of_exact_match():
    from searchr1 import intervals

    lo, hi = intervals.wilson(0.0, 64)
    assert lo == 0.0 and 0.05 < hi < 0.06  # 0/64 still leaves up to ~5.7%
    lo, hi = intervals.wilson(0.5, 64)
    assert round(lo, 3) == 0.381 and round(hi, 3) == 0.619  # (p + z²/2n ± z√(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    mean, lo, hi = intervals.mean_of_proportions([0.25, 0.75], [64, 64])  # equal n: the pooled proportion
    assert mean == 0.5 and (lo, hi) == intervals.wilson(0.5, 128)
    mean, lo, hi = intervals.mean_of_proportions([0.0, 1.0], [10, 30])  # unequal n: normal on the mean
    assert mean == 0.5 and lo == hi == 0.5  # no variance in either benchmark
    with pytest.raises(ValueError, match="n must be positive"):
        intervals.wilson(0.5, 0)


def test_report_shows_intervals_and_the_rl_gain():
    import pandas as pd

    from searchr1.report import _intervals

    rows = []
    for ckpt, step, em in (("warm-start", 0, 0.25), ("step-000002", 2, 0.5), ("step-000004", 4, 0.375)):
        for bench in ("bridge", "single_hop"):
            rows.append({"checkpoint": ckpt, "step": step, "method": "search_agent", "benchmark": bench,
                         "metric": "em", "value": em, "n": 64})
    text, gain = _intervals(pd.DataFrame(rows))
    assert "| search_agent | step-000002 | 50.0 [38.1, 61.9] (n=64) |" in text
    assert "best GRPO checkpoint step-000002 50.0" in gain and "+25.0 points" in gain


@pytest.mark.parametrize(("choice", "expected"), [
    ("all", None), ("last", "the last 1 of the run's 3"), (2, "the last 2 of the run's 3"), (3, None), (9, None)])
def test_the_report_says_which_checkpoints_went_unscored(choice, expected):
    from searchr1.report import scored_note

    train = TrainSummary.of({"steps": 3}, engine="trl", init="m", warm_started=True, last_step=3,
                            checkpoints=[f"checkpoints/step-00000{i}" for i in (1, 2, 3)])
    note = scored_note({"evaluation": {"checkpoints": choice}}, {"train": train})
    assert (note is None) if expected is None else (expected in note and f"checkpoints: {choice}" in note)
    assert scored_note({"evaluation": {"checkpoints": 2}}, {}) is None  # no train stage: nothing to say
