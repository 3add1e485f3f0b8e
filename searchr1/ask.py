"""Ask a checkpoint one question and print the whole multi-turn trace, like the seed's script.

    searchr1 ask "Who wrote The Glass Orchard?" --model artifacts/.../checkpoint-20 --index DIR
    searchr1 ask "..." --retriever-url http://127.0.0.1:8000 agent.max_turns=2   # a running retrieval server

(`python -m searchr1.ask` takes the same arguments.) Config overrides are positional key.sub=value words.

Retrieval is local: a built index directory or the retrieval server. (The seed searched the web
with DuckDuckGo; that needs network access and is not offered here.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from searchr1.agent.rollout import Rollout, run_agent
from searchr1.config import load_config_for_cli


def print_trace(rollout: Rollout, out=sys.stdout) -> None:
    print(f"===== Prompt =====\n{rollout.prompt}", file=out)
    turn = 0
    for seg in rollout.segments:
        if seg["role"] == "assistant":
            turn += 1
            print(f"\n===== Assistant (turn {turn}) =====\n{seg['text']}", file=out)
        else:
            print(f"\n===== Tool =====\n{seg['text']}", file=out)
    pred = rollout.prediction
    print(f"\n===== Result =====\nanswer: {pred if pred is not None else '(none given)'}\n"
          f"stop: {rollout.stop_reason}  turns: {rollout.turns}  search calls: {rollout.search_calls} "
          f"(invalid {rollout.invalid_calls})  generated tokens: {rollout.gen_tokens}", file=out)
    if rollout.queries:
        print("queries: " + " | ".join(rollout.queries), file=out)
    if rollout.issues:
        print("format issues: " + ", ".join(f"{k}={v}" for k, v in sorted(rollout.issues.items())), file=out)


def main(argv: list[str] | None = None, prog: str = "python -m searchr1.ask") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("question")
    ap.add_argument("--model", help="HF checkpoint folder (default: the config's base policy)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path, help="index directory built by the index stage")
    where.add_argument("--retriever-url", help="retrieval server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--config", default="configs/tiny.yaml", help="pipeline config (agent/policy/retrieval)")
    ap.add_argument("--sample", action="store_true", help="sample at agent.temperature instead of greedy")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. agent.max_turns=2")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config_for_cli(args.config, args.overrides)
    if cfg is None:
        return 2

    from searchr1.agent.generators import make_generator
    from searchr1.models import resolve_policy

    if args.retriever_url:
        from searchr1.retrieval.client import RetrievalClient

        searcher = RetrievalClient(args.retriever_url)
    else:
        from searchr1.retrieval.searcher import load_searcher

        if not args.index.is_dir():
            print(f"error: --index {args.index}: not a directory", file=sys.stderr)
            return 2
        searcher = load_searcher(args.index, cfg.retrieval)
    model = args.model or resolve_policy(cfg.policy, cfg.run.artifacts_dir)
    generator = make_generator(model, cfg.agent, cfg.policy, greedy=not args.sample)
    question = {"id": "ask", "question": args.question, "golden_answers": []}
    rollout = run_agent([question], generator, searcher, cfg.agent, progress=False)[0]
    print_trace(rollout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
