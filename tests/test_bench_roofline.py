"""The roofline benchmark counts each projection weight of a decoder layer once (its FLOPs are 2 per weight), and
sizes a token's KV cache as the model's own cache holds it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_vllm_roofline import kv_bytes_per_token, parse_contexts, projection_shapes  # noqa: E402


def _gqa_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    # SmolLM2's shape family: grouped-query attention (3 kv heads of 9), tied embeddings
    config = LlamaConfig(hidden_size=72, intermediate_size=96, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=3, vocab_size=500, tie_word_embeddings=True)
    return config, LlamaForCausalLM(config)


def test_projection_shapes_cover_every_linear_weight_of_a_gqa_llama_once():
    import torch

    config, model = _gqa_llama()
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
    layer, head, n_layers = projection_shapes(config)
    assert n_layers * sum(k * n for k, n in layer) == linear
    assert head == (72, 500) and head[0] * head[1] == model.lm_head.weight.numel()


def test_kv_bytes_per_token_is_what_the_models_own_cache_holds():
    import torch

    config, model = _gqa_llama()
    tokens = 7
    cache = model(torch.zeros(1, tokens, dtype=torch.long), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert kv_bytes_per_token(config, 4) * tokens == held  # fp32 weights: 4 bytes an element


@pytest.mark.parametrize("text", ["", "64,x", "64,0", "-5"])
def test_bad_contexts_are_refused_by_name(text):
    with pytest.raises(SystemExit, match="--contexts"):
        parse_contexts(text)
