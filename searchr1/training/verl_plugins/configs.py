"""The files verl reads to load our plug-ins, as data: built as dicts here, written with `yaml.safe_dump`.

- the tool config (`actor_rollout_ref.rollout.multi_turn.tool_config_path`): one native tool, our
  `SearchTool`, with the retrieval server's base URL, the policy's tokenizer and the protocol;
- the agent-loop config (`actor_rollout_ref.rollout.agent.agent_loop_config_path`): our loop under our
  name, and under verl's `tool_agent` too: a row tagged for verl's own tool loop (verl's search
  example, older train-data folders) must not run a loop that ignores the protocol.
Both carry the same protocol (`AgentProtocol` fields), so the loop can check that its tool agrees.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from searchr1.agent.protocol import AgentProtocol
from searchr1.io import write_text_atomic
from searchr1.retrieval.client import base_url
from searchr1.training.verl_plugins import AGENT_NAME

TOOL_CLASS = "searchr1.training.verl_plugins.tool.SearchTool"
LOOP_CLASS = "searchr1.training.verl_plugins.agent_loop.SearchAgentLoop"
VERL_TOOL_LOOP = "tool_agent"  # verl's own ToolAgentLoop's registry name
LOOP_NAMES = (AGENT_NAME, VERL_TOOL_LOOP)


def protocol_fields(protocol: AgentProtocol) -> dict[str, Any]:
    return dataclasses.asdict(protocol)


def tool_config(protocol: AgentProtocol, retrieval_url: str, tokenizer: str, *, trust_remote_code: bool = False,
                timeout_s: float = 60.0, retries: int = 3) -> dict[str, Any]:
    """verl's tool-config layout (`tools: [{class_name, config}]`); no `tool_schema`: the tool's own is the
    protocol's (verl's schema model would drop the array's `items`)."""
    return {"tools": [{"class_name": TOOL_CLASS, "config": {
        "type": "native",
        "base_url": base_url(retrieval_url),  # refuses a URL ending in /retrieve (the client appends it)
        "tokenizer": str(tokenizer),
        "trust_remote_code": bool(trust_remote_code),
        "timeout_s": float(timeout_s),
        "retries": int(retries),
        "protocol": protocol_fields(protocol),
    }}]}


def agent_loop_config(protocol: AgentProtocol) -> list[dict[str, Any]]:
    """verl's agent-loop-config layout: a list of `{name, _target_, **constructor kwargs}`."""
    return [{"name": name, "_target_": LOOP_CLASS, "_convert_": "all", "protocol": protocol_fields(protocol)}
            for name in LOOP_NAMES]


def write_yaml(path: Path, data: Any) -> Path:
    write_text_atomic(Path(path), yaml.safe_dump(data, sort_keys=False))
    return Path(path)
