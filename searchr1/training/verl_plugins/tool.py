"""The `search` tool as verl 0.9.1 loads it (a native `BaseTool` named in the tool config file).

It calls our retrieval server (`RetrievalClient` on the server's base URL) and returns the agent
protocol's observation, cut with the policy's tokenizer, exactly as `make_search_tool` does for the
in-process engines. A retrieval failure (server down, HTTP error after the client's retries) is not
raised: like verl's own loop, the model is shown `Error executing tool ...`, but the call is reported
as failed in the tool's metrics, the agent loop counts it per trajectory, and the step-level guard
(`sampler.SearchCheckedReplayBuffer`) stops the run when too many calls of a step failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ConfigDict
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import (
    OpenAIFunctionParametersSchema,
    OpenAIFunctionPropertySchema,
    OpenAIFunctionSchema,
    OpenAIFunctionToolSchema,
    ToolResponse,
)

from searchr1.agent.prompts import SEARCH_TOOL_SCHEMA
from searchr1.agent.protocol import AgentProtocol
from searchr1.retrieval.client import RetrievalClient
from searchr1.training.search_tool import ToolStats, make_search_tool

REQUIRED_KEYS = ("base_url", "tokenizer", "protocol")


# verl's schema models keep only `type/description/enum` of a parameter: the array's `items` would be
# dropped and the chat template would show the model another schema than evaluation does.
class _Property(OpenAIFunctionPropertySchema):
    model_config = ConfigDict(extra="allow")


class _Parameters(OpenAIFunctionParametersSchema):
    properties: dict[str, _Property]


class _Function(OpenAIFunctionSchema):
    parameters: _Parameters


class _ToolSchema(OpenAIFunctionToolSchema):
    function: _Function


def search_tool_schema() -> OpenAIFunctionToolSchema:
    """The protocol's `search` schema as verl's schema type; dumps back to `SEARCH_TOOL_SCHEMA` exactly."""
    return _ToolSchema.model_validate(SEARCH_TOOL_SCHEMA)


def error_text(tool_name: str, exc: BaseException) -> str:
    """What the model sees when the tool fails: verl's ToolAgentLoop's wording."""
    return f"Error executing tool '{tool_name}': {exc}"


class SearchTool(BaseTool):
    """`search(query_list)` over our retrieval server. Config keys (the tool config file's `config:`):
    base_url, tokenizer (the policy's path), protocol (AgentProtocol fields), and optionally
    trust_remote_code, timeout_s, retries."""

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None = None):
        missing = [k for k in REQUIRED_KEYS if k not in config]
        if missing:
            raise ValueError(f"search tool config: missing {missing} (write it with "
                             f"searchr1.training.verl_plugins.configs.tool_config)")
        if tool_schema is not None:
            raise ValueError("search tool config: remove `tool_schema`; the tool's schema is the agent protocol's")
        from transformers import AutoTokenizer

        self.protocol = AgentProtocol(**config["protocol"])
        self.client = RetrievalClient(config["base_url"], timeout=float(config.get("timeout_s", 60.0)),
                                      retries=int(config.get("retries", 3)))
        self.tokenizer = AutoTokenizer.from_pretrained(config["tokenizer"],
                                                       trust_remote_code=bool(config.get("trust_remote_code")))
        self.stats = ToolStats()  # this worker's totals; the per-step guard reads the per-trajectory counts
        self._search = make_search_tool(self.client, self.protocol, self.tokenizer, self.stats)
        super().__init__(config, None)

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return search_tool_schema()

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
                      ) -> tuple[ToolResponse, float, dict[str, Any]]:
        """(observation, 0 reward, {"failed": whether the retriever failed}). A call without a usable
        query raises (the model's fault; verl's loop shows the message); a retriever failure does not."""
        query_list = parameters.get("query_list") if isinstance(parameters, dict) else parameters
        usable = bool(self.protocol.queries_from_arguments({"query_list": query_list}))
        try:
            text = await asyncio.to_thread(self._search, query_list)
        except Exception as exc:
            if not usable:
                raise
            return ToolResponse(text=error_text(self.name, exc)), 0.0, {"failed": True}
        return ToolResponse(text=text), 0.0, {"failed": False}
