"""GRPO's log-probs with the rows' shared prompt computed once (`training.prefix.completion_logps`): the same
log-probs, entropies and gradients as TRL's fused LM head on the batch layout TRL hands over (left-padded
prompts, right-padded completions), on a random Llama."""

from __future__ import annotations

import pytest
import torch

from searchr1.config import ConfigError, config_from_dict
from searchr1.training.prefix import MIN_SHARED_PREFIX, completion_logps, plain_lm_head

PAD = 0
TEMPERATURE = 0.7


def _batch(system: int, questions: list[int], completions: list[int]):
    """TRL's layout: prompts (a shared system part + a question of its own) left-padded, completions right-padded;
    `scored` marks the model's own completion tokens (every third one is tool text, as a multi-turn rollout has)."""
    g = torch.Generator().manual_seed(1)
    head = torch.randint(1, 64, (system,), generator=g).tolist()
    prompts = [head + torch.randint(1, 64, (q,), generator=g).tolist() for q in questions]
    comps = [torch.randint(1, 64, (c,), generator=g).tolist() for c in completions]
    pw, cw = max(map(len, prompts)), max(map(len, comps))
    pairs = list(zip(prompts, comps, strict=True))
    ids = torch.tensor([[PAD] * (pw - len(p)) + p + c + [PAD] * (cw - len(c)) for p, c in pairs])
    mask = torch.tensor([[0] * (pw - len(p)) + [1] * (len(p) + len(c)) + [0] * (cw - len(c)) for p, c in pairs])
    scored = torch.tensor([[int(j < len(c) and j % 3 != 2) for j in range(cw)] for c in comps])
    return ids, mask, cw, scored


def _trl(model, ids, mask, keep, scored):
    """TRL 1.16's path: its fused LM head, labels on every completion token, read where `scored`."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-keep] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -keep:] * scored, out.entropy[:, -keep:] * scored


def _loss_grads(model, fn, weights):
    model.zero_grad(set_to_none=True)
    logps, ent = fn()
    (logps * weights).sum().backward()
    return logps.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_completion_logps_give_trls_log_probs_entropies_and_gradients(random_llama):
    ids, mask, keep, scored = _batch(system=MIN_SHARED_PREFIX + 8, questions=[3, 7, 5], completions=[9, 4, 12])
    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(2))
    model = random_llama()
    ours = _loss_grads(model, lambda: completion_logps(model, ids, mask, keep, scored, temperature=TEMPERATURE,
                                                       entropy=True), weights)
    theirs = _loss_grads(model, lambda: _trl(model, ids, mask, keep, scored), weights)
    assert (ours[0][scored == 0] == 0).all() and (ours[0][scored == 1] < 0).all()
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-4, atol=1e-5)
    for name, grad in theirs[2].items():
        torch.testing.assert_close(ours[2][name], grad, rtol=1e-3, atol=1e-6, msg=name)


def test_a_row_with_a_gap_in_its_attention_is_refused(random_llama):
    ids, mask, keep, scored = _batch(system=MIN_SHARED_PREFIX, questions=[2, 2], completions=[5, 5])
    mask[0, -3] = 0
    with pytest.raises(ValueError, match="one run of ones"):
        completion_logps(random_llama(), ids, mask, keep, scored)


def test_only_a_plain_head_is_scored_by_ours(random_llama):
    model = random_llama()
    assert plain_lm_head(model)
    model.config.final_logit_softcapping = 30.0
    assert not plain_lm_head(model)


def test_the_shared_prefix_refuses_gradient_checkpointing_by_name():
    with pytest.raises(ConfigError, match="grpo.shared_prefix needs training.grpo.gradient_checkpointing"):
        config_from_dict({"training": {"grpo": {"gradient_checkpointing": True}}})
    cfg = config_from_dict({"training": {"grpo": {"gradient_checkpointing": True, "shared_prefix": False}}})
    assert cfg.training.grpo.gradient_checkpointing
