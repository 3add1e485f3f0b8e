"""Shared pieces for the verl tests (no tests here): a live retrieval server (BM25: no model to load) over
the fictional facts, the real policy tokenizer, verl 0.9.1's config composed from our rendered overrides,
verl's own `AgentLoopWorker`, and scripted model turns as token ids, behind verl's LLM-server interface
and behind the evaluation loop's Generator interface. Named test_* only to sit with the files it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from test_agent_fixtures import FACTS

from searchr1.agent.generators import TurnOutput, cut_turn, end_token_ids
from searchr1.config import PipelineConfig, load_config
from searchr1.retrieval.index import build_index
from searchr1.training.data import TRAIN_FILE, VERL_DIR, build_train_data
from searchr1.training.verl_launch import VerlPlan, render_verl

ROOT = Path(__file__).resolve().parents[1]
QUESTION = {"id": "q0", "question": "Where was Velmora Quist born?", "golden_answers": ["Tarnhollow"]}
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": False}


def policy_path() -> Path:
    """The tiny profile's policy folder (SmolLM2 with Qwen2.5's tool template), converted once into artifacts/."""
    from searchr1.models import resolve_policy

    return Path(resolve_policy(PipelineConfig().policy, ROOT / "artifacts"))


def policy_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy_path())


@contextmanager
def live_server(root: Path) -> Iterator[str]:
    """Our retrieval server over a BM25 index of FACTS (no model to load); yields its base URL."""
    from searchr1.retrieval.server import running_server

    with running_server(build_bm25_index(root), small_verl_config(policy_path())) as base:
        yield base


def build_bm25_index(root: Path) -> Path:
    rows = [{"id": str(i), "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(FACTS)]
    (root / "corpus" / "passages").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus" / "passages" / "part-00000.parquet")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["retrieval.index.kind=bm25"])
    build_index(root / "corpus", root / "index", cfg.retrieval)
    return root / "index"


def small_verl_config(policy: Path, style: str = "tool_call", *extra: str) -> PipelineConfig:
    """The tiny profile run by verl: a 1-GPU shape, the agent budgets small enough to check by eye."""
    return load_config(ROOT / "configs" / "tiny.yaml", [
        # DAPO refill and the warmup's first-step shift are the TRL engine's options
        "training.engine=verl", "training.grpo.refill_rounds=0", "training.grpo.warmup_first_step_moves=false",
        "training.verl.check_deviations=false", f"policy.model={policy}",
        "retrieval.index.kind=bm25", "retrieval.server.port=0", f"agent.prompt_style={style}", "agent.max_turns=3",
        "agent.max_new_tokens=64", "agent.max_obs_tokens=40", "agent.topk=2", "agent.max_response_tokens=400",
        "training.verl.n_gpus_per_node=1", "training.verl.train_batch_size=4", "training.verl.ppo_mini_batch_size=2",
        "training.grpo.group_size=2", "training.verl.max_prompt_length=1024", *extra])


def render_small_run(cfg: PipelineConfig, root: Path, url: str) -> tuple[VerlPlan, dict[str, Any]]:
    """Train data for QUESTION and the rendered plan; returns (plan, the question's verl row)."""
    build_train_data({"single_hop": [QUESTION]}, cfg, root / "data")
    plan = render_verl(cfg, root / "data", url, root / "verl")
    row = pq.read_table(root / "data" / VERL_DIR / TRAIN_FILE).to_pylist()[0]
    return plan, row


def compose_verl(overrides: Sequence[str]):
    """verl 0.9.1's own ppo_trainer config with our overrides, composed by hydra as main_ppo does."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def make_worker(root: Path, url: str, style: str):
    """verl's own AgentLoopWorker for the small run in this style: (worker, QUESTION's row, the protocol).
    The LLM server is set per trajectory (`worker.llm_client`)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from searchr1.agent.protocol import AgentProtocol

    cfg = small_verl_config(policy_path(), style)
    plan, row = render_small_run(cfg, root, url)
    worker = AgentLoopWorker(compose_verl(plan.overrides), None, None, None)
    return worker, row, AgentProtocol.from_config(cfg.agent)


class ScriptedServer:
    """verl's LLM-server interface (`await generate(request_id, prompt_ids=, sampling_params=)`): turn k
    returns the token ids of `turns[k]`, up to `max_tokens` as vLLM would; every request is kept."""

    def __init__(self, tokenizer: Any, turns: Sequence[str]):
        self.tokenizer, self.turns, self.requests = tokenizer, list(turns), []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any):
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        ids = self.tokenizer(self.turns[len(self.requests) - 1], add_special_tokens=False)["input_ids"]
        return TokenOutput(token_ids=ids[:sampling_params["max_tokens"]], extra_fields={"global_steps": 1})


class ScriptedTurns:
    """The evaluation loop's Generator interface over the same scripted turns and real token ids: each turn
    is cut where a real generator cuts it (`cut_turn`), fed text is appended as tokens."""

    def __init__(self, tokenizer: Any, turns: Sequence[str]):
        self.tokenizer, self.turns = tokenizer, list(turns)
        self.end_ids = end_token_ids(None, tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, prompts: Sequence[str]) -> list[int]:
        self.history = [self.encode(p) for p in prompts]
        self.written = [[0] * len(h) for h in self.history]
        self.prompt_len, self.turn = [len(h) for h in self.history], [0] * len(prompts)
        return list(self.prompt_len)

    def generate(self, rows: Sequence[int], max_new_tokens: int, stop: Sequence[str]) -> list[TurnOutput]:
        outs = []
        for r in rows:
            ids = self.encode(self.turns[self.turn[r]])[:max_new_tokens]
            self.turn[r] += 1
            n, eos = cut_turn(ids, self.tokenizer.batch_decode([[t] for t in ids]), self.end_ids, stop)
            self.history[r] += ids[:n]
            self.written[r] += [1] * n
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
            outs.append(TurnOutput(text, n, eos, hit_limit=n == max_new_tokens and not eos))
        return outs

    def extend(self, row: int, text: str) -> int:
        ids = self.encode(text)
        self.history[row] += ids
        self.written[row] += [0] * len(ids)
        return len(ids)

    def completion(self, row: int) -> tuple[list[int], list[int]]:
        p = self.prompt_len[row]
        return self.history[row][p:], self.written[row][p:]


def run_verl_loop(worker: Any, row: dict[str, Any]):
    """One trajectory through verl's `AgentLoopWorker._run_agent_loop` (registry lookup, hydra instantiation
    of the loop named by the row, our loop's run, verl's padding): the padded output."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    # verl's loop registry is process-global: put back this worker's entries (a worker built later, for
    # another prompt style, registered the same names with its own protocol)
    for entry in OmegaConf.load(worker.rollout_config.agent.agent_loop_config_path):
        _agent_loop_registry[entry.name] = entry
    trajectory = {"step": 1, "sample_index": 0, "rollout_n": 0, "validate": False}
    extra = row["extra_info"]
    return asyncio.run(worker._run_agent_loop(dict(SAMPLING), trajectory, agent_name=row["agent_name"],
                                              raw_prompt=row["prompt"], extra_info=extra, index=0,
                                              tools_kwargs=extra["tools_kwargs"], data_source=row["data_source"],
                                              reward_model=row["reward_model"]))


def unpad(out: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, response ids, response mask) without verl's left/right padding."""
    width = out.prompt_ids.shape[1]
    attn = out.attention_mask[0].tolist()
    prompt = [t for t, a in zip(out.prompt_ids[0].tolist(), attn[:width], strict=True) if a]
    n = sum(attn[width:])
    return prompt, out.response_ids[0].tolist()[:n], out.response_mask[0].tolist()[:n]
