"""The multi-turn search agent as a verl 0.9.1 agent loop, under the agent protocol (both prompt styles).

verl's own `ToolAgentLoop` cannot run Search-R1's rules: it only executes calls its hermes parser
reads (a raw-text `<tool_call> query </tool_call>` ends the episode, `<search>` is never executed),
has no per-turn cap, and cuts tool text by characters. This loop does what the evaluation loop
(`searchr1.agent.rollout.run_agent`) does, one trajectory at a time, on verl's LLM server:

- the prompt: the protocol's messages and tools through the chat template (verl's token builder);
- each turn: at most `max_new_tokens`, cut at the protocol's stop strings (`cut_turn`), parsed by the
  protocol (the seed's raw-text fallback included), then the protocol decides: search, retry with
  Search-R1's invalid-action hint, or stop;
- a search: the `search` tool (`tool.SearchTool`) returns the protocol's observation; it is fed as the
  chat template's tool message (tool_call style) or in `<information>` tags (search_r1 style);
- `response_mask` is 1 on the model's tokens and 0 on everything fed (tool text, hints);
- extra fields for the reward and the step guard: the model's own text, search calls and failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, ToolListWrap, register
from verl.utils.profiler import simple_timer

from searchr1.agent.generators import cut_turn, end_token_ids
from searchr1.agent.protocol import AgentProtocol
from searchr1.agent.trace import Segment, model_text
from searchr1.training.verl_plugins import AGENT_NAME, TOOL_NAME
from searchr1.training.verl_plugins.reward import MODEL_TEXT
from searchr1.training.verl_plugins.tool import error_text

SEARCH_CALLS, SEARCH_ERRORS, STOP_REASON = "search_calls", "search_errors", "stop_reason"


@dataclass
class Episode:
    """One trajectory's response so far: tokens, who wrote them, and what happened."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 = the model wrote it, 0 = fed to it
    logprobs: list[float] | None = None
    segments: list[Segment] = field(default_factory=list)
    turns: int = 0
    fed: int = 0  # tool or hint messages fed back
    calls: int = 0
    errors: int = 0
    stop: str | None = None
    server_fields: dict[str, Any] = field(default_factory=dict)

    def add(self, ids: list[int], written: int, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.mask += [written] * len(ids)
        if logprobs is not None and self.logprobs is None:
            self.logprobs = [0.0] * (len(self.ids) - len(ids))
        if self.logprobs is not None:
            self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


@register(AGENT_NAME)
class SearchAgentLoop(AgentLoopBase):
    """verl instantiates it per trajectory with the agent-loop config's `protocol` (AgentProtocol fields)."""

    def __init__(self, *args: Any, tools: ToolListWrap | None = None, protocol: dict[str, Any] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if protocol is None:
            raise ValueError("agent loop config: `protocol` missing (write the file with "
                             "searchr1.training.verl_plugins.configs.agent_loop_config)")
        self.protocol = AgentProtocol(**dict(protocol))
        by_name = {tool.name: tool for tool in (tools.tools if tools else [])}
        if TOOL_NAME not in by_name:
            raise ValueError(f"no {TOOL_NAME!r} tool loaded (have {sorted(by_name)}): set "
                             f"actor_rollout_ref.rollout.multi_turn.tool_config_path to the tool config file")
        self.tool = by_name[TOOL_NAME]
        tool_protocol = getattr(self.tool, "protocol", self.protocol)
        if tool_protocol != self.protocol:
            raise ValueError(f"the search tool's protocol {tool_protocol} differs from the agent loop's "
                             f"{self.protocol}: write both config files from one config")
        self.response_length = int(self.rollout_config.response_length)
        self.end_ids = end_token_ids(None, self.tokenizer)

    def messages(self, kwargs: dict[str, Any]) -> list[dict[str, str]]:
        """The protocol's messages for the row's question; the row's own prompt must be the same."""
        question = (kwargs.get("extra_info") or {}).get("question")
        if question is None:
            raise ValueError("training row without extra_info.question: build it with the train-data stage")
        messages = self.protocol.messages(str(question))
        raw = [dict(m) for m in kwargs.get("raw_prompt", messages)]
        if raw != messages:
            raise ValueError(f"the row's prompt is not the {self.protocol.style!r} style's prompt for its "
                             f"question: the train-data stage ran with another agent.prompt_style")
        return messages

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        metrics: dict[str, Any] = {}
        prompt_ids = await self.ct_build_initial_tokens(self.messages(kwargs), tools=self.protocol.tools())
        request_id, ep = uuid4().hex, Episode()
        for turn in range(self.protocol.max_turns):
            room = self.response_length - len(ep.mask)
            if room <= 0:
                ep.stop = "max_tokens"
                break
            text, ended_with_eos, hit_limit = await self._turn(ep, prompt_ids, sampling_params, request_id,
                                                               min(self.protocol.max_new_tokens, room), metrics)
            parsed = self.protocol.parse(text)
            decision = self.protocol.decide(parsed, turn, len(ep.mask), hit_limit)
            if decision == "search":
                with simple_timer("tool_calls", metrics):
                    observation = await self._search(parsed.queries, kwargs.get("tools_kwargs") or {}, ep)
                _, fed = self.protocol.tool_text(self.tokenizer, observation, ended_with_eos)
            elif decision == "retry":
                fed = self.protocol.invalid_action_hint
            else:
                ep.stop = decision
                break
            if not self._feed(ep, fed):
                break
        ep.stop = ep.stop or "max_turns"
        return self._output(prompt_ids, ep, metrics)

    async def _turn(self, ep: Episode, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                    max_tokens: int, metrics: dict[str, Any]) -> tuple[str, bool, bool]:
        """One assistant turn: (its text, ended on an end-of-turn token, ran into max_tokens)."""
        params = {**sampling_params, "max_tokens": max_tokens, "stop": list(self.protocol.stop_strings)}
        with simple_timer("generate_sequences", metrics):
            out = await self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids + ep.ids,
                                                     sampling_params=params)
        metrics["num_preempted"] = metrics.get("num_preempted", 0) + (out.num_preempted or 0)
        if not ep.server_fields:
            ep.server_fields = dict(out.extra_fields)
        elif out.extra_fields.get("max_global_steps") is not None:  # the weights version of the last turn
            ep.server_fields["max_global_steps"] = out.extra_fields["max_global_steps"]
        tokens = list(out.token_ids)
        n, ended_with_eos = cut_turn(tokens, self.tokenizer.batch_decode([[t] for t in tokens]), self.end_ids,
                                     self.protocol.stop_strings)
        ep.add(tokens[:n], 1, out.log_probs[:n] if out.log_probs else None)
        text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
        ep.segments.append({"role": "assistant", "text": text})
        ep.turns += 1
        return text, ended_with_eos, n == max_tokens and not ended_with_eos

    async def _search(self, queries: list[str], tools_kwargs: dict[str, Any], ep: Episode) -> str:
        """The tool's observation; a failure is counted and its message becomes the observation."""
        ep.calls += 1
        create_kwargs = (tools_kwargs.get(self.tool.name) or {}).get("create_kwargs") or {}
        instance_id = None
        try:
            instance_id, _ = await self.tool.create(create_kwargs=create_kwargs)
            response, _, tool_metrics = await self.tool.execute(instance_id, {"query_list": queries})
        except Exception as exc:  # a tool other than ours may raise where ours reports
            ep.errors += 1
            return error_text(self.tool.name, exc)
        finally:
            if instance_id is not None:
                await self.tool.release(instance_id)
        ep.errors += int(bool((tool_metrics or {}).get("failed")))
        return response.text or ""

    def _feed(self, ep: Episode, text: str) -> bool:
        """Append fed text (mask 0); False when it fills the response budget (the episode ends there)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.response_length - len(ep.mask)
        ep.add(ids[:room], 0)
        ep.segments.append({"role": "tool", "text": text})
        ep.fed += 1
        if len(ids) >= room:
            ep.stop = "max_tokens"
            return False
        return True

    def _output(self, prompt_ids: list[int], ep: Episode, metrics: dict[str, Any]) -> AgentLoopOutput:
        extra = {**ep.server_fields, MODEL_TEXT: model_text(ep.segments), SEARCH_CALLS: ep.calls,
                 SEARCH_ERRORS: ep.errors, STOP_REASON: ep.stop, "turn_scores": [], "tool_rewards": []}
        return AgentLoopOutput(prompt_ids=prompt_ids, response_ids=ep.ids, response_mask=ep.mask,
                               response_logprobs=ep.logprobs, num_turns=1 + ep.turns + ep.fed, metrics=metrics,
                               extra_fields=extra)
