"""Who samples GRPO's rollouts: the glue around the engines (the engines themselves are tested on the real
policy in test_training_grpo.py and test_vllm_generator.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.training import rollout_samplers
from searchr1.training.rollout_samplers import in_process_sampler, reseed, sampling_seed, vllm_sampler


class _Saves:
    def __init__(self, name: str, log: list):
        self.name, self.log, self.training, self.saves = name, log, True, 0

    def save_pretrained(self, folder, **kw):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.saves += 1
        (Path(folder) / self.name).write_text(str(self.saves))
        self.log.append(("save", self.name))

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode


def test_vllm_sampler_keeps_one_engine_swaps_each_steps_weights_in_and_seeds_each_step_and_round(monkeypatch,
                                                                                                tmp_path):
    log: list = []
    made: list[dict] = []

    class Engine:
        def __init__(self, path, **kw):
            made.append({"path": path, "files": sorted(p.name for p in Path(path).iterdir()), **kw})
            self.seed = kw["seed"]

        def load_weights(self, path):
            log.append(("load", (Path(path) / "model.safetensors").read_text()))

    monkeypatch.setattr(rollout_samplers, "make_generator", lambda path, agent, policy, **kw: Engine(path, **kw))
    monkeypatch.setattr(rollout_samplers, "can_swap", lambda gen, path: isinstance(gen, Engine))
    monkeypatch.setattr(rollout_samplers, "close_generator", lambda gen: gen and log.append(("close", gen.seed)))
    scratch = tmp_path / ".rollout-policy"
    (scratch.parent).mkdir(exist_ok=True)
    sample = vllm_sampler(scratch, AgentConfig(), PolicyConfig(), temperature=1.0, top_p=0.9, kv_cache_gib=0.5,
                          seed=3)
    trainer = SimpleNamespace(model=_Saves("model.safetensors", log), processing_class=_Saves("tokenizer.json", log))
    for step in (1, 2, 3):
        with sample(trainer, step) as gen:
            assert gen.seed == sampling_seed(3, step, 0)
            reseed(gen, 3, step, 1)  # a refill round draws its own
            assert gen.seed == sampling_seed(3, step, 1) != sampling_seed(3, step, 0)
    assert [m["files"] for m in made] == [["model.safetensors", "tokenizer.json"]]  # one engine, opened at step 1
    assert [(m["temperature"], m["top_p"], m["cpu_kv_cache_gib"], m["greedy"]) for m in made] == [(1.0, 0.9, 0.5,
                                                                                                   False)]
    assert [e for e in log if e[0] in ("load", "close")] == [("load", "2"), ("load", "3")]  # each step's own weights
    sample.close()
    assert log[-1] == ("close", sampling_seed(3, 3, 1))
    with pytest.raises(RuntimeError), sample(trainer, 4):  # a failed step closes the engine it used
        raise RuntimeError("search backend down")
    assert log[-1] == ("close", sampling_seed(3, 4, 0)) and len(made) == 2 and sample.generator is None
    Engine.on_cpu = False  # a GPU engine: closed after each step's rollouts, its memory is the update's
    with sample(trainer, 5) as gen:
        pass
    assert log[-1] == ("close", sampling_seed(3, 5, 0)) and sample.generator is None
    assert len({sampling_seed(s, t, r) for s in range(3) for t in range(20) for r in range(3)}) == 180


def test_in_process_sampler_hands_the_model_back_in_train_mode_even_on_error(monkeypatch):
    model = _Saves("m", [])
    monkeypatch.setattr(rollout_samplers, "TransformersGenerator", lambda m, tok, **kw: SimpleNamespace(**kw))
    sample = in_process_sampler(temperature=0.7, top_p=1.0)
    try:
        with sample(SimpleNamespace(model=model, processing_class=None), 1) as gen:
            assert not model.training and gen.temperature == 0.7 and not gen.greedy
            reseed(gen, 0, 1, 1)  # nothing to reseed: torch's RNG moves on
            raise RuntimeError("search failed")
    except RuntimeError:
        pass
    assert model.training
