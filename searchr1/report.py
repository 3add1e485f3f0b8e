"""The run report: one Markdown file and one self-contained HTML file (figures embedded) per pipeline run.

The report is assembled as Markdown from what the stages left behind (their summaries, the results
table, the reflection analysis, the training metrics) and rendered to HTML once with markdown-it;
PNGs sit next to report.md and are inlined as base64 in report.html, so the HTML opens anywhere.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from searchr1 import intervals, markdown
from searchr1.evaluation.config import scored_count
from searchr1.evaluation.hops import HopSection
from searchr1.io import atomic_file, write_text_atomic
from searchr1.reflection.stats import rl_trajectory
from searchr1.schema import AGENT, flatten
from searchr1.summaries import CorpusSummary, StageSummary, TrainSummary, WarmStartSummary
from searchr1.training.verl_plugins.search_r1_reference import SEARCH_R1

# the GRPO knobs both engines take from `training.grpo`, by their name in Search-R1's reference table
SAMPLING_KEYS = {"temperature": "training.grpo.temperature", "top-p": "training.grpo.top_p",
                 "KL coefficient": "training.grpo.kl_coef"}

PAPER_POLICY = "Qwen2.5-3B-Instruct"
METHOD_ORDER = {"direct": 0, "rag": 1, AGENT: 2}  # rows of the results tables: baselines first
CURVE_PATTERNS = ("reward", "em", "accuracy", "reflect", "search", "turn", "kl", "loss", "entropy", "length")
MAX_CURVES = 6

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; max-width: 1040px;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; border-radius: 6px; }
pre code { padding: 0; }
img { max-width: 100%; border: 1px solid #eaeef2; border-radius: 4px; margin: .5em 0; }
blockquote { border-left: 4px solid #d0d7de; margin: .5em 0; padding: 0 1em; color: #57606a; }
.note { background: #fff8c5; border: 1px solid #eedd77; padding: .5em 1em; border-radius: 6px; }
"""


class ReportError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------- helpers


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"  # counts that came through JSON or MLflow as floats
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
            return f"{v:.3g}"  # learning rates, tiny p-values
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        text = ", ".join(_fmt(x) for x in v[:8]) + (f", … ({len(v)} in all)" if len(v) > 8 else "")
        return text
    s = json.dumps(v, default=str) if isinstance(v, dict) else str(v)
    return markdown.escape(s if len(s) <= 160 else s[:157] + "…")


def _table(rows: list[Mapping[str, Any]] | pd.DataFrame, columns: list[str] | None = None) -> str:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if df.empty:
        return "_(none)_"
    return markdown.frame_table(df, columns, lambda _column, value: _fmt(value))


def _get(cfg: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _facts(summary: StageSummary, skip: tuple[str, ...] = ("files", "figures")) -> str:
    flat = {k: v for k, v in flatten(summary.to_json()).items() if k.split(".")[0] not in skip}
    if not flat:
        return "_(this stage reported no summary)_"
    return _table([{"fact": k, "value": v} for k, v in flat.items()])


def _copy_png(src: Path | None, out_dir: Path, name: str) -> str | None:
    """Copy a PNG next to report.md; returns its file name, or None when there is none."""
    if src is None or not Path(src).is_file():
        return None
    dst = out_dir / name
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
    return name


# ---------------------------------------------------------------------------------------------- sections


def warm_start_used(config: Mapping[str, Any], stages: Mapping[str, StageSummary]) -> bool:
    """Whether GRPO started from the warm-started model: the train stage says so; before it ran, the config."""
    train = stages.get("train")
    if isinstance(train, TrainSummary):
        return train.warm_started
    return "warm-start" in stages or bool(_get(config, "training.warm_start.enabled", False))


def scored_note(config: Mapping[str, Any], stages: Mapping[str, StageSummary]) -> str | None:
    """A line saying which GRPO checkpoints were left unscored (`evaluation.checkpoints` other than "all")."""
    choice = _get(config, "evaluation.checkpoints", "all")
    train = stages.get("train")
    if choice == "all" or not isinstance(train, TrainSummary):
        return None
    saved = len(train.checkpoints)
    scored = scored_count(saved, choice)
    if scored >= saved:
        return None
    return (f"Scored: the last {scored} of the run's {saved} GRPO checkpoints (`evaluation.checkpoints: {choice}`), "
            "with the base and the warm-started policy; the earlier ones are saved in the train stage, not scored.")


def deviations(config: Mapping[str, Any], stages: Mapping[str, StageSummary]) -> list[str]:
    """How this run differs from Search-R1's setup, read off the config (nothing branches on a profile name)."""
    out = []
    if _get(config, "corpus.source") == "synthetic":
        corpus = stages.get("corpus")
        size = f" ({_fmt(corpus.passages)} passages)" if isinstance(corpus, CorpusSummary) else ""
        out.append(f"**Corpus:** a generated fictional world{size} instead of wiki-18 (21M Wikipedia passages); "
                   "its entities are made up, so the model can only answer by searching.")
    if _get(config, "questions.source") == "synthetic":
        out.append("**Questions:** synthetic suites by skill (single-hop, bridge, comparison, compositional) instead "
                   "of NQ, TriviaQA, PopQA, HotpotQA, 2Wiki, Musique and Bamboogle; the scores are not comparable "
                   "with the paper's.")
    model = str(_get(config, "policy.model", ""))
    if model and "qwen2.5-3b" not in model.lower():
        shown = "SmolLM2-135M-Instruct" if "smollm2" in model.lower() else model
        out.append(f"**Policy:** {shown} (`{model}`) instead of {PAPER_POLICY}.")
    if warm_start_used(config, stages):
        n = _get(config, "training.warm_start.n_examples")
        ws = stages.get("warm-start")
        checks = (f" {ws.verify_rate:.0%} of them check the last hop with a second search after a reflective phrase "
                  "(\"Wait, let me verify …\"): the starting rate of the behaviour the reflection study follows."
                  if isinstance(ws, WarmStartSummary) and ws.traces else "")
        if checks and ws.check_probability is not None:
            checks += (f" What the fine-tuned policy learnt of it: probability {ws.check_probability:.1%} of opening "
                       "that turn with \"Wait\" (mean over the traces' decisions after their last hop).")
        weights = _get(config, "training.warm_start.skill_weights") or {}
        dealt = (" Traces dealt per round of the suites: " + ", ".join(f"{s} x{w}" for s, w in sorted(weights.items()))
                 + " (the others x1)." if weights else "")
        epochs = _get(config, "training.warm_start.epochs", 1)
        passes = f" ({_fmt(epochs)} epochs at learning rate {_get(config, 'training.warm_start.learning_rate'):g})" \
            if epochs != 1 else ""
        out.append(f"**Supervised warm start:** before GRPO the policy was fine-tuned on {_fmt(n) if n else 'some'} "
                   f"worked search traces{passes}, because a model this small never calls the tool on its own and "
                   "GRPO gets no reward variance to learn from. Search-R1 starts RL from the instruct model "
                   f"directly.{checks}{dealt}")
    if _get(config, "training.engine") == "trl":
        steps = _get(config, "training.grpo.steps")
        prompts = _get(config, "training.grpo.prompts_per_step")
        group = _get(config, "training.grpo.group_size")
        out.append(f"**Training scale:** TRL on CPU, {_fmt(steps)} GRPO steps of {prompts} prompts × {group} "
                   "completions, instead of verl on GPUs with 512 prompts per step.")
    reference = {ref.name: ref.search_r1 for ref in SEARCH_R1}
    sampled = [f"{name} {value:g} (Search-R1: {reference[name]:g})" for name, key in SAMPLING_KEYS.items()
               if (value := _get(config, key, reference[name])) != reference[name]]
    if sampled:
        out.append(f"**GRPO sampling and loss:** {', '.join(sampled)}.")
    refill = _get(config, "training.grpo.refill_rounds", 0)
    if refill:
        out.append(f"**Dynamic sampling (DAPO):** up to {refill} draw(s) of fresh training questions per step replace "
                   "groups whose rollouts all got one reward; Search-R1 trains on every group as sampled.")
    if _get(config, "training.engine") == "trl" and (warmup := _warmup_deviation(config, reference["warm-up ratio"])):
        out.append(warmup)
    if reward := _reward_deviation(config):
        out.append(reward)
    embedder = str(_get(config, "retrieval.embedder.model", ""))
    if embedder and "e5" not in embedder.lower():
        out.append(f"**Retriever:** `{embedder}` instead of e5-base-v2.")
    return out


def _warmup_deviation(config: Mapping[str, Any], search_r1_ratio: float) -> str | None:
    """The TRL engine's learning-rate warmup against Search-R1's (verl's ramp: the first step at rate 0)."""
    ratio = float(_get(config, "training.grpo.warmup_ratio", 0.0) or 0.0)
    moves = bool(_get(config, "training.grpo.warmup_first_step_moves", False)) and ratio > 0
    if ratio == search_r1_ratio and not moves:
        return None
    steps = _get(config, "training.grpo.steps")
    warmup = math.ceil(ratio * steps) if isinstance(steps, int) else None  # HF's and verl's count
    if not ratio:
        return f"**Learning-rate warmup:** none (Search-R1: {search_r1_ratio:g} of the steps)."
    share = f"{ratio:g} of the steps" + (f" ({warmup} of {steps})" if warmup else "")
    text = (f"**Learning-rate warmup:** Search-R1's {share}" if ratio == search_r1_ratio
            else f"**Learning-rate warmup:** {share} (Search-R1: {search_r1_ratio:g})")
    if moves and warmup:
        text += (f", the ramp one step on: the first step trains at 1/{warmup + 1} of the rate, where verl's ramp "
                 "trains it at 0 (over a short run, a checkpoint equal to its start)")
    return text + "."


def _reward_deviation(config: Mapping[str, Any]) -> str | None:
    """The reward's named deviations from Search-R1's exact match (`AgentProtocol.reward`)."""
    credit = float(_get(config, "training.grpo.format_reward", 0.0) or 0.0)
    penalty = float(_get(config, "training.grpo.invalid_call_penalty", 0.0) or 0.0)
    terms = ([f"a wrong but present answer scores {credit:g}"] if credit else []) + (
        [f"a right answer whose text holds a malformed search call scores {1 - penalty:g} "
         "(the right-answer branch of Search-R1's `qa_em_format`, with malformed calls as the invalid format)"]
        if penalty else [])
    if not terms:
        return None
    return f"**Reward:** exact match of the last answer, as Search-R1's, except that {'; '.join(terms)}."


def _config_summary(config: Mapping[str, Any]) -> str:
    keys = ["run.name", "run.seed", "corpus.source", "questions.source", "questions.eval_benchmarks",
            "questions.max_eval_questions", "retrieval.topk", "retrieval.embedder.model", "retrieval.index.kind",
            "policy.model", "policy.dtype", "agent.prompt_style", "agent.max_turns", "agent.generator",
            "agent.vllm.dtype", "training.engine", "training.warm_start.enabled", "training.warm_start.epochs",
            "training.warm_start.learning_rate", "training.warm_start.bf16",
            "training.grpo.bf16", "training.grpo.steps", "training.grpo.prompts_per_step",
            "training.grpo.group_size", "training.grpo.learning_rate", "training.grpo.warmup_ratio",
            "training.grpo.warmup_first_step_moves", "training.grpo.kl_coef", "training.grpo.format_reward",
            "training.grpo.invalid_call_penalty",
            "training.grpo.temperature", "training.grpo.refill_rounds", "training.grpo.rollout_generator",
            "training.grpo.save_every", "evaluation.checkpoints", "evaluation.baselines", "evaluation.baselines_at",
            "reflection.bootstrap_samples", "reflection.lexicon_file"]
    rows = [{"setting": k, "value": _get(config, k)} for k in keys if _get(config, k, "__missing__") != "__missing__"]
    return _table(rows)


def plot_training_curves(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Up to six panels of the most telling training series (reward/EM first) over steps."""
    if metrics is None or metrics.empty or "step" not in metrics:
        return None
    numeric = [c for c in metrics.columns if c != "step" and pd.api.types.is_numeric_dtype(metrics[c])
               and metrics[c].notna().sum() >= 1]
    chosen: list[str] = []
    for pat in CURVE_PATTERNS:
        for c in numeric:
            if c not in chosen and re.search(rf"(^|[/_.]){pat}", c.lower()):
                chosen.append(c)
    chosen = (chosen or numeric)[:MAX_CURVES]
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(chosen) > 1 else 1
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.8 * rows), squeeze=False)
    data = metrics.sort_values("step")
    for ax, name in zip(axes.flat, chosen, strict=False):
        s = data[["step", name]].dropna()
        ax.plot(s["step"], s[name], marker="o" if len(s) < 30 else None, ms=3, lw=1.2, color="tab:blue")
        if len(s) >= 8:  # a moving average makes the trend of noisy per-step values visible
            ax.plot(s["step"], s[name].rolling(5, center=True, min_periods=2).mean(), color="tab:red", lw=1.5,
                    alpha=0.8, label="5-step mean")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no "step 2.5" tick on short runs
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    fig.suptitle("Training curves", fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def _results_frame(results_md: Path | None) -> pd.DataFrame | None:
    """The evaluation's long-form results (results.parquet beside results.md), if it is there."""
    if results_md is None:
        return None
    path = Path(results_md).with_name("results.parquet")
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    need = {"checkpoint", "step", "method", "benchmark", "metric", "value"}
    if not need <= set(df.columns):
        raise ReportError(f"{path}: expected columns {sorted(need)}, found {sorted(df.columns)}")
    return df


def _headline(results: pd.DataFrame | None, analysis: Mapping[str, Any] | None) -> list[str]:
    lines = []
    if results is not None:
        em = results[(results["metric"] == "em") & (results["benchmark"] == "average")]
        agent = em[em["method"] == AGENT].sort_values("step")
        if not agent.empty:
            first, last = agent.iloc[0], agent.iloc[-1]
            best = agent.loc[agent["value"].idxmax()]
            lines.append(f"- **Search agent, average exact match:** {first['value']:.3f} at {first['checkpoint']} → "
                         f"{last['value']:.3f} at {last['checkpoint']} (best {best['value']:.3f} at "
                         f"{best['checkpoint']}).")
        for method in ("rag", "direct"):
            b = em[em["method"] == method].sort_values("step")
            if not b.empty:
                lines.append(f"- **{method.upper() if method == 'rag' else 'Direct answer'} baseline:** "
                             f"{b.iloc[-1]['value']:.3f} ({b.iloc[-1]['checkpoint']}).")
    if analysis:
        s = analysis.get("statistics", {})
        if "across_checkpoints" in s:
            lines.append(f"- **Reflective phrases vs. score:** {s['across_checkpoints']['verdict']}.")
        if "across_rl_checkpoints" in s:
            lines.append(f"- **Along the RL trajectory (base left out):** {s['across_rl_checkpoints']['verdict']}.")
        if "within_checkpoint" in s:
            lines.append(f"- **Within a checkpoint:** {s['within_checkpoint']['verdict']}.")
    return lines


def seed_claim(analysis: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """One sentence on the seed's claim (reflective phrases grow with training and go with a higher score):
    what this run's evaluated checkpoints say about it, and what a run of this kind cannot say."""
    cp = pd.DataFrame(analysis.get("tables", {}).get("checkpoints", []))
    s = analysis.get("statistics", {})
    if cp.empty or "across_checkpoints" not in s:
        return None
    # the seed's claim is about training: RL moves the ratio from where it started (the warm-started policy
    # when there is one, not the base), and the relation is judged on that trajectory where the analysis has it
    trajectory = rl_trajectory(cp)
    first, last = trajectory.iloc[0], trajectory.iloc[-1]
    # an analysis.json from before the trajectory relation existed judges all its checkpoints
    on_rl = "across_rl_checkpoints" in s
    across = s["across_rl_checkpoints" if on_rl else "across_checkpoints"]
    partial = s.get("across_rl_checkpoints_partial" if on_rl else "partial_step", {})
    points = trajectory if on_rl or len(trajectory) == len(cp) else cp
    over = f"{across.get('n', len(points))} evaluated checkpoints"
    over += " of the RL trajectory" if points is trajectory else ""
    r = across.get("pearson_r")
    if across.get("conclusive") and r is not None:
        stance = "supports" if r > 0 else "contradicts"
    else:
        stance = "neither supports nor contradicts"
    within = s.get("within_checkpoint", {})
    moved = "rose" if last["ratio"] > first["ratio"] else "fell" if last["ratio"] < first["ratio"] else "stayed"
    said = [f"the reflective ratio {moved} from {first['ratio']:.2f} ({first['checkpoint']}) to {last['ratio']:.2f} "
            f"({last['checkpoint']}) over {over}, and the relation between ratio and score across them "
            f"{stance} the claim"]
    if r is not None:
        lo, hi = across.get("pearson_ci", [None, None])
        ci = f", {across['confidence']:.0%} CI [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else ""
        said[-1] += f" (r = {r:+.2f}{ci}"
        said[-1] += f"; partial on step {partial['r']:+.2f})" if partial.get("r") is not None else ")"
    if within.get("em_diff") is not None:
        p = f" against the others (p = {within['p']:.3g})" if within.get("p") is not None else ""
        said.append(f"within a checkpoint reflective rollouts score {100 * within['em_diff']:+.1f} EM points{p}")
    ws = _get(config, "training.warm_start", {}) or {}
    scope = ("a run of a small policy on a generated world, whose checks were planted by the warm start "
             f"(verify rate {ws.get('verify_rate', 0):.2f}), cannot say whether reflection emerges from RL at the "
             "seed's scale, only whether the relation holds up under the controls the seed did not apply"
             if ws.get("enabled") and ws.get("verify_rate") else
             "a correlation over the checkpoints of one run shows co-movement, not that reflecting causes the "
             "higher score")
    return f"**On the seed's claim:** {'; '.join(said)}; {scope}."


def _baselines(results: pd.DataFrame | None) -> str:
    if results is None:
        return "_results.parquet not found next to the results table; no baseline breakdown._"
    em = results[results["metric"] == "em"]
    if em.empty:
        return "_no exact-match rows in the results._"
    wide = em.pivot_table(index=["method", "checkpoint", "step"], columns="benchmark", values="value",
                          aggfunc="first").reset_index()
    benches = [c for c in wide.columns if c not in ("method", "checkpoint", "step") and c != "average"]
    cols = ["method", "checkpoint"] + sorted(benches) + (["average"] if "average" in wide.columns else [])
    wide = wide.sort_values(["method", "step"],
                            key=lambda s: s.map(METHOD_ORDER).fillna(9) if s.name == "method" else s)
    return ("Exact match of every method at every evaluated checkpoint (direct = the model answers without "
            "search; rag = top-k passages retrieved for the question, then one answer):\n\n" + _table(wide, cols))


def _pct(lo_hi: tuple[float, float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


def _intervals(results: pd.DataFrame | None) -> tuple[str, str | None]:
    """The held-out EM of every (method, checkpoint) with 95% intervals, and the RL gain over the
    warm-started policy (its best GRPO checkpoint vs the warm start, on the average)."""
    if results is None:
        return "_results.parquet not found; no intervals._", None
    em = results[(results["benchmark"] != "average") & (results["metric"] == "em")]
    if em.empty or "n" not in em.columns:
        return "_no exact-match rows with question counts in the results._", None
    benches = sorted(em["benchmark"].unique())
    rows, averages = [], {}
    for (method, ckpt, step), g in sorted(em.groupby(["method", "checkpoint", "step"]),
                                          key=lambda kv: (METHOD_ORDER.get(kv[0][0], 9), kv[0][2], kv[0][1])):
        cells = {r.benchmark: (float(r.value), int(r.n)) for r in g.itertuples()}
        ps, ns = [cells[b][0] for b in benches if b in cells], [cells[b][1] for b in benches if b in cells]
        mean, lo, hi = intervals.mean_of_proportions(ps, ns)
        averages[(method, ckpt, step)] = (mean, lo, hi)
        rows.append([method, ckpt, *(f"{100 * cells[b][0]:.1f} {_pct(intervals.wilson(*cells[b]))} (n={cells[b][1]})"
                                     if b in cells else "–" for b in benches), f"{100 * mean:.1f} {_pct((lo, hi))}"])
    text = ("Exact match (%) with 95% intervals (Wilson per benchmark; the average is the plain mean over "
            "benchmarks, its interval from `searchr1.intervals.mean_of_proportions`):\n\n"
            + markdown.table(["method", "checkpoint", *benches, "average"], rows))
    warm = averages.get((AGENT, "warm-start", 0))
    trained = {k: v for k, v in averages.items() if k[0] == AGENT and k[2] > 0}
    gain = None
    if warm and trained:
        (_, ckpt, _), best = max(trained.items(), key=lambda kv: kv[1][0])
        gain = (f"- **RL gain over the warm-started policy:** best GRPO checkpoint {ckpt} "
                f"{100 * best[0]:.1f} {_pct(best[1:])} vs warm start {100 * warm[0]:.1f} {_pct(warm[1:])}: "
                f"{100 * (best[0] - warm[0]):+.1f} points on the average.")
    return text, gain


def _reflection_section(analysis_dir: Path | None, out_dir: Path) -> tuple[str, dict | None]:
    if analysis_dir is None or not (Path(analysis_dir) / "analysis.md").is_file():
        return "_The reflection analysis did not run for this pipeline run._", None
    analysis_dir = Path(analysis_dir)
    md = (analysis_dir / "analysis.md").read_text(encoding="utf-8")
    data = None
    if (analysis_dir / "analysis.json").is_file():
        data = json.loads((analysis_dir / "analysis.json").read_text(encoding="utf-8"))
    for png in sorted(analysis_dir.glob("*.png")):
        _copy_png(png, out_dir, f"reflection_{png.name}")
    # analysis.md references its figures by bare name; here they carry a prefix
    md = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", r"![\1](reflection_\2)", md)
    md = re.sub(r"^## Reflective-phrase analysis\s*$", "", md, count=1, flags=re.M)
    return md.strip(), data


# ---------------------------------------------------------------------------------------------- html


def render_html(markdown: str, out_dir: Path, title: str) -> str:
    """Markdown → one HTML page; every local PNG is inlined as a data URI so the file stands alone."""
    from markdown_it import MarkdownIt

    # html=False: nothing in the report (model text, summaries) can inject markup into the page
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    # the long config appendix starts folded
    body = re.sub(r"(<h2>Appendix: full configuration</h2>\s*)(<pre>.*?</pre>)",
                  r"\1<details><summary>show the configuration</summary>\2</details>", body, flags=re.S)

    def inline(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        path = out_dir / src
        if "/" in src or not path.is_file():
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


# ---------------------------------------------------------------------------------------------- the report


def build_report(out_dir: Path, *, config: dict, stages: Mapping[str, StageSummary], results_md: Path | None,
                 results_png: Path | None, analysis_dir: Path | None, train_metrics: pd.DataFrame | None,
                 mlflow_links: Mapping[str, str], hops: HopSection | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNGs they show into out_dir; returns {name: path}. `hops`: the
    searches against the hops each question needs (`searchr1.evaluation.hops.hop_section`, its figure already in
    out_dir)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_name = _get(config, "run.name", "run")
    title = f"reproduce-search-r1 — {run_name} run report"
    results = _results_frame(results_md)
    interval_md, gain = _intervals(results)
    reflection_md, analysis = _reflection_section(analysis_dir, out_dir)
    curves = plot_training_curves(train_metrics, out_dir / "training_curves.png") if train_metrics is not None \
        else None
    results_img = _copy_png(results_png, out_dir, "results.png")

    md: list[str] = [f"# {title}", "",
                     f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}. Search-R1 (GRPO with a "
                     "search tool) reproduced as one Prefect flow, tracked in MLflow.", ""]
    claim = seed_claim(analysis, config) if analysis else None
    head = (_headline(results, analysis) + ([f"- **Hops:** {hops.headline}."] if hops and hops.headline else [])
            + ([gain] if gain else []) + ([f"- {claim}"] if claim else []))
    if head:
        md += ["## Summary", ""] + head + [""]
    devs = deviations(config, stages)
    if devs:
        md += ["## Deviations from Search-R1", "",
               "This run is a scaled-down stand-in for the paper's setup, so its numbers test the pipeline and the "
               "method's mechanics, not the paper's scores:", ""] + [f"- {d}" for d in devs] + [""]

    md += ["## Configuration", "", _config_summary(config), "",
           "The full configuration is in the appendix and logged as `config.json` on the MLflow pipeline run.", ""]

    md += ["## Corpus, questions and index", ""]
    for name in ("corpus", "questions", "index", "train-data"):
        if name in stages:
            md += [f"### {name}", "", _facts(stages[name]), ""]

    md += ["## Training", ""]
    for name in ("warm-start", "train"):
        if name in stages:
            md += [f"### {name}", "", _facts(stages[name]), ""]
    if curves is not None:
        md += ["![training curves](training_curves.png)", ""]
    else:
        md += ["_No training metrics were recorded._", ""]

    md += ["## Results", ""]
    note = scored_note(config, stages)
    if note:
        md += [note, ""]
    if results_md is not None and Path(results_md).is_file():
        md += [Path(results_md).read_text(encoding="utf-8").strip(), ""]
    else:
        md += ["_No results table was produced._", ""]
    if results_img:
        md += ["![results](results.png)", ""]
    md += ["## Held-out exact match with intervals", "", interval_md, ""]
    if hops:
        md += ["## Searches against the hops each question needs", "", hops.markdown, ""]
    md += ["## Baselines", "", _baselines(results), ""]
    if "evaluate" in stages:
        md += ["### evaluation", "", _facts(stages["evaluate"]), ""]

    md += ["## Reflective-phrase analysis", "", reflection_md, ""]

    md += ["## MLflow runs", ""]
    md += [f"- [{name}]({url})" for name, url in mlflow_links.items()] or ["_none recorded_"]
    md += ["", "Start the UI with `make mlflow-ui` to follow these links (they point at $SEARCHR1_MLFLOW_UI, "
           "default http://127.0.0.1:$MLFLOW_PORT, port 5000).", ""]

    md += ["## Appendix: full configuration", "", "```yaml",
           yaml.safe_dump(config, sort_keys=False, default_flow_style=False).strip(), "```", ""]

    text = "\n".join(md)
    paths: dict[str, Path] = {"md": write_text_atomic(out_dir / "report.md", text),
                              "html": write_text_atomic(out_dir / "report.html", render_html(text, out_dir, title))}
    for png in sorted(out_dir.glob("*.png")):
        paths[f"png:{png.stem}"] = png
    return paths
