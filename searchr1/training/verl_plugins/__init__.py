"""verl 0.9.1 plug-ins that make verl's GRPO trainer follow the agent protocol (`searchr1.agent.protocol`).

- `tool.SearchTool`: verl's `BaseTool` for `search(query_list)`: our retrieval server through
  `RetrievalClient`, the protocol's observation text; a failed retrieval is counted, not hidden;
- `agent_loop.SearchAgentLoop`: the multi-turn loop (both prompt styles), registered with verl's
  agent-loop registry: the protocol's prompt, per-turn cap, turn budget, query parsing, observation
  glue, Search-R1's invalid-action retry; tool text is 0 in `response_mask`;
- `reward.compute_score`: the protocol's reward (exact match of the last `<answer>` the model wrote);
- `sampler.SearchCheckedReplayBuffer`: the step-level guard: counts the step's search calls and
  failures (logged metrics) and stops the run when the failed share passes the configured bound;
- `configs`: the two YAML files verl reads (tool config, agent-loop config), written from dicts;
- `search_r1_reference`: Search-R1's hyperparameters, to hold the rendered run against.

`configs`, `search_r1_reference` and this module import without verl; the others need it.
"""

from pathlib import Path

AGENT_NAME = "searchr1_agent"  # the agent loop's name in verl's registry
TOOL_NAME = "search"
VERL_VERSION = "0.9.1"
# The dotted key paths of verl 0.9.1's composed ppo_trainer config (names only), to validate overrides.
PPO_TRAINER_KEYS = Path(__file__).with_name("ppo_trainer_keys.json")
