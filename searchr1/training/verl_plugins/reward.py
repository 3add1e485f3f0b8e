"""Search-R1's reward as verl 0.9.1 calls it (`reward.custom_reward_function.path` = this file).

verl decodes the whole response, tool text included; the protocol scores only what the model wrote
(the passages and Search-R1's invalid-action hint contain `<answer>` tags of their own). Our agent
loop passes the model's text in `extra_info["model_text"]` (verl merges the loop's extra fields into
`extra_info`); another loop's rows fall back to verl's decoded response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

from searchr1.agent.prompts import PromptStyle
from searchr1.agent.protocol import AgentProtocol

MODEL_TEXT = "model_text"  # the extra field our agent loop fills

# The reward rule does not depend on the budgets; the prompt style says which tags are a search call.
_PROTOCOLS = {style: AgentProtocol(style=style) for style in get_args(PromptStyle)}


def golden_answers(ground_truth: Any) -> list[str]:
    """`reward_model.ground_truth` as the train-data stage writes it ({"target": [...]}) or a bare list/string."""
    golden = ground_truth.get("target") if isinstance(ground_truth, Mapping) else ground_truth
    if isinstance(golden, str):
        return [golden]
    if isinstance(golden, Sequence) or hasattr(golden, "tolist"):  # parquet gives numpy arrays
        return [str(g) for g in list(golden)]
    raise ValueError(f"reward_model.ground_truth {ground_truth!r}: expected {{'target': [answers]}}")


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None = None,
                  format_reward: float = 0.0, invalid_call_penalty: float = 0.0, prompt_style: str = "tool_call",
                  **kwargs: Any) -> float:
    """Exact match of the last `<answer>` the model wrote (1.0 / 0.0), with `AgentProtocol.reward`'s two named
    deviations (0 in Search-R1): `format_reward` for a wrong but present answer, `invalid_call_penalty` off a
    right answer beside a malformed search call. verl passes them and the run's prompt style from `reward_kwargs`."""
    if prompt_style not in _PROTOCOLS:
        raise ValueError(f"reward_kwargs.prompt_style {prompt_style!r}: expected one of {sorted(_PROTOCOLS)}")
    text = (extra_info or {}).get(MODEL_TEXT)
    protocol = _PROTOCOLS[prompt_style]
    return protocol.reward(solution_str if text is None else str(text), golden_answers(ground_truth),
                           format_reward=float(format_reward), invalid_call_penalty=float(invalid_call_penalty))
