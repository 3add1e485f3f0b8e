"""The roofline benchmark counts each projection weight of a decoder layer once (its FLOPs are 2 per weight)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_vllm_roofline import projection_shapes  # noqa: E402


def test_projection_shapes_cover_every_linear_weight_of_a_gqa_llama_once():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    # SmolLM2's shape family: grouped-query attention (3 kv heads of 9), tied embeddings
    config = LlamaConfig(hidden_size=72, intermediate_size=96, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=3, vocab_size=500, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
    layer, head, n_layers = projection_shapes(config)
    assert n_layers * sum(k * n for k, n in layer) == linear
    assert head == (72, 500) and head[0] * head[1] == model.lm_head.weight.numel()
