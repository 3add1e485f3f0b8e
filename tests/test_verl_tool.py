"""The verl plug-ins one by one: the client's base URL, the search tool (schema, observation, failures), the
reward function, and the step guard in the replay buffer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_agent_fixtures import KeywordSearcher

from searchr1.agent.prompts import SEARCH_R1_INVALID, SEARCH_TOOL_SCHEMA
from searchr1.agent.protocol import AgentProtocol
from searchr1.retrieval.client import RetrievalClient, base_url
from searchr1.training.search_tool import ToolFailureError, ToolStats
from searchr1.training.verl_plugins import configs
from searchr1.training.verl_plugins.reward import compute_score

pytestmark = pytest.mark.slow  # imports verl (~10 s)

PROTO = AgentProtocol(topk=2, max_obs_tokens=60)


def test_client_takes_the_servers_base_url():
    assert base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert base_url("https://search.example/api") == "https://search.example/api"
    # the old bug: a URL ending in /retrieve was requested as /retrieve/retrieve (404 on every call)
    for bad in ("http://127.0.0.1:8000/retrieve", "http://h:1/api/retrieve/"):
        with pytest.raises(ValueError, match="give the server's base URL .*appends /retrieve"):
            RetrievalClient(bad)
    with pytest.raises(ValueError, match="expected http"):
        RetrievalClient("127.0.0.1:8000")
    with pytest.raises(ValueError, match="base URL"):
        configs.tool_config(PROTO, "http://127.0.0.1:8000/retrieve", "tok")


def test_tool_schema_is_the_protocols_with_items():
    from verl.tools.schemas import OpenAIFunctionToolSchema

    from searchr1.training.verl_plugins.tool import search_tool_schema

    assert search_tool_schema().model_dump(exclude_unset=True, exclude_none=True) == SEARCH_TOOL_SCHEMA
    # why the subclass: verl's own schema model drops the array's item type
    plain = OpenAIFunctionToolSchema.model_validate(SEARCH_TOOL_SCHEMA).model_dump(exclude_unset=True)
    assert "items" not in plain["function"]["parameters"]["properties"]["query_list"]


class FakeClient:
    """Stands in for RetrievalClient inside the tool: keyword hits, or the server's failure."""

    def __init__(self, fail: bool = False):
        self.fail, self.searcher = fail, KeywordSearcher()

    def search(self, queries, topk):
        if self.fail:
            raise RuntimeError("http://127.0.0.1:9/retrieve failed after 4 attempts; last error: ConnectError")
        return self.searcher.search(queries, topk)


def make_tool(tmp_path, monkeypatch, client: FakeClient):
    from test_verl_fixtures import policy_path

    from searchr1.training.verl_plugins import tool as tool_module

    monkeypatch.setattr(tool_module, "RetrievalClient", lambda url, **kw: client)
    cfg = configs.tool_config(PROTO, "http://127.0.0.1:9", str(policy_path()))["tools"][0]
    return tool_module.SearchTool(cfg["config"])


def call(tool, parameters):
    async def go():
        instance, _ = await tool.create()
        return await tool.execute(instance, parameters)
    return asyncio.run(go())


def test_tool_observation_and_failures(tmp_path, monkeypatch):
    tool = make_tool(tmp_path, monkeypatch, FakeClient())
    response, reward, metrics = call(tool, {"query_list": ["  Velmora   Quist born ", "Kelvane Bridge"]})
    hits = KeywordSearcher().search(["Velmora Quist born", "Kelvane Bridge"], PROTO.topk)  # queries cleaned
    assert response.text == PROTO.observation(hits, tool.tokenizer) and (reward, metrics) == (0.0, {"failed": False})
    assert len(tool.tokenizer(response.text, add_special_tokens=False)["input_ids"]) == PROTO.max_obs_tokens
    with pytest.raises(ValueError, match="query_list is empty"):  # the model's fault: verl shows it the message
        call(tool, {"query_list": ["  "]})
    down = make_tool(tmp_path, monkeypatch, FakeClient(fail=True))
    response, _, metrics = call(down, {"query_list": ["Velmora Quist"]})
    assert metrics == {"failed": True} and response.text.startswith("Error executing tool 'search': http://")
    assert (down.stats.calls, down.stats.errors, tool.stats.empty_calls) == (1, 1, 1)
    with pytest.raises(ValueError, match="remove `tool_schema`"):
        type(tool)({**tool.config}, tool.tool_schema)


def test_reward_scores_only_what_the_model_wrote():
    gt = {"target": np.array(["Tarnhollow", "Tarnhollow city"])}  # parquet gives numpy arrays
    model = "<think>x</think><search> q </search><answer> Tarnhollow </answer>"
    full = model + "\n\n<information>Doc 1(Title: A) <answer> no </answer></information>\n\n"
    assert compute_score("searchR1_nq", full, gt, extra_info={"model_text": model}) == 1.0
    assert compute_score("searchR1_nq", full, gt) == 0.0  # without the loop's field: verl's whole response
    assert compute_score("searchR1_nq", "<think>a</think>" + SEARCH_R1_INVALID, gt) == 0.0
    assert compute_score("searchR1_nq", "<answer>Quenby</answer>", gt, format_reward=0.1) == 0.1
    empty = "<search></search><answer>Tarnhollow</answer>"  # an empty call: malformed in Search-R1's style
    assert compute_score("searchR1_nq", empty, gt, invalid_call_penalty=0.25, prompt_style="search_r1") == 0.75
    assert compute_score("searchR1_nq", empty, gt, invalid_call_penalty=0.25) == 1.0  # no call in the tool_call style
    with pytest.raises(ValueError, match="prompt_style 'xml'"):
        compute_score("searchR1_nq", empty, gt, prompt_style="xml")
    assert compute_score("searchR1_nq", "<answer>tarnhollow.</answer>", ["Tarnhollow"]) == 1.0


def test_step_guard_counts_and_stops(monkeypatch):
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    from searchr1.training.verl_plugins import sampler

    assert sampler.search_step_stats([{"search_calls": 2, "search_errors": 1}, None, {"search_calls": 1}]) == (
        ToolStats(calls=3, errors=1), 3)
    fields = {"rows": []}

    class Got:
        def pop(self, key):
            assert key == "extra_fields"
            return np.array(fields["rows"], dtype=object)

    batch = KVBatchMeta(partition_id="train", keys=["u_0_0", "u_1_0"], tags=[{}, {}])
    monkeypatch.setattr(ReplayBuffer, "sample", lambda self, **kw: (batch, {"training/off_policy/x": 0.0}))
    monkeypatch.setattr(sampler.tq, "kv_batch_get", lambda **kw: Got())
    kw = dict(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=8, max_off_policy_strategy="drop")
    with pytest.raises(ValueError, match="sampler_kwargs.max_tool_error_rate"):
        sampler.SearchCheckedReplayBuffer(**kw, sampler_kwargs={})
    buf = sampler.SearchCheckedReplayBuffer(**kw, sampler_kwargs={"max_tool_error_rate": 0.25})
    fields["rows"] = [{"search_calls": 3, "search_errors": 0}, {"search_calls": 1, "search_errors": 1}]
    got, metrics = buf.sample(global_steps=7, partition_id="train", batch_size=1)
    assert got is batch and metrics == {"training/off_policy/x": 0.0, "search/calls": 4.0, "search/failed_calls": 1.0,
                                        "search/failed_share": 0.25, "search/calls_per_rollout": 2.0}
    fields["rows"] = [{"search_calls": 2, "search_errors": 1}, {"search_calls": 1, "search_errors": 1}]
    with pytest.raises(ToolFailureError, match="step 7: 2 of 3 search calls failed"):
        buf.sample(global_steps=7, partition_id="train", batch_size=1)


def test_verls_mlflow_logger_writes_into_the_stage_run(tmp_path, monkeypatch):
    """verl's own Tracking (trainer.logger=[console, mlflow]) with the env launch_verl passes: it attaches to
    the train stage's run instead of creating one."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from verl.utils.tracking import Tracking

    from searchr1.tracking import tracking_uri
    from searchr1.training.verl_launch import mlflow_env

    uri = tracking_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("reproduce-search-r1")
    stage_run = client.create_run(experiment, run_name="train").info.run_id
    for key, value in mlflow_env(uri, stage_run).items():
        monkeypatch.setenv(key, value)
    previous = mlflow.get_tracking_uri()
    try:
        tracking = Tracking(project_name="other-project", experiment_name="other-name", default_backend=["mlflow"],
                            config={"actor_rollout_ref": {"rollout": {"top_p": 0.95}}})
        tracking.log({"search/calls": 12.0, "search/failed_share": 0.0}, step=3)
        tracking.finish()
    finally:
        mlflow.set_tracking_uri(previous)
    assert [(m.step, m.value) for m in client.get_metric_history(stage_run, "search/calls")] == [(3, 12.0)]
    assert client.get_run(stage_run).data.params["actor_rollout_ref/rollout/top_p"] == "0.95"
    assert [r.info.run_id for r in client.search_runs([experiment])] == [stage_run]  # no run of its own
    assert client.get_experiment_by_name("other-project") is None
