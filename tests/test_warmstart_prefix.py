"""The warm start's shared-prefix forward: the same loss and gradients as the plain forward, computed once for the
rows' common first tokens (training.warm_start.shared_prefix)."""

from __future__ import annotations

import pytest
import torch

from searchr1.config import ConfigError, config_from_dict
from searchr1.training.prefix import MIN_SHARED_PREFIX, shared_prefix_len
from searchr1.training.warmstart import IGNORE, masked_lm_loss

PAD = 0


def _batch(prefix: int, tails: list[int]):
    """Right-padded rows that share `prefix` first tokens, then differ; labels on the second half of each tail."""
    g = torch.Generator().manual_seed(1)
    head = torch.randint(1, 64, (prefix,), generator=g).tolist()
    rows = [head + torch.randint(1, 64, (t,), generator=g).tolist() for t in tails]
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = torch.full_like(ids, IGNORE)
    for i, r in enumerate(rows):
        start = prefix + (len(r) - prefix) // 2
        labels[i, start:len(r)] = ids[i, start:len(r)]
    return ids, mask, labels


def _loss_and_grads(model, batch, shared: bool):
    model.zero_grad(set_to_none=True)
    loss = masked_lm_loss(model, *batch, shared_prefix=shared)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_the_shared_prefix_gives_the_plain_forwards_loss_and_gradients(random_llama):
    model = random_llama()
    batch = _batch(prefix=40, tails=[9, 30, 17, 3])  # rows of different lengths: right padding after each
    assert shared_prefix_len(batch[0], batch[1]) == 40
    plain, plain_grads = _loss_and_grads(model, batch, shared=False)
    shared, shared_grads = _loss_and_grads(model, batch, shared=True)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    for name, g in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], g, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    assert any(g.abs().sum() > 0 for n, g in shared_grads.items() if "layers.0" in n)  # reached the first layer


def test_each_row_keeps_a_token_of_its_own_and_short_prefixes_run_the_plain_forward(random_llama):
    ids, mask, _ = _batch(prefix=20, tails=[0, 5])  # the first row is the prefix itself
    assert shared_prefix_len(ids, mask) == 19
    ids, mask, labels = _batch(prefix=MIN_SHARED_PREFIX - 1, tails=[6, 6])
    model = random_llama()
    torch.testing.assert_close(masked_lm_loss(model, ids, mask, labels, shared_prefix=True),
                               masked_lm_loss(model, ids, mask, labels))


def test_the_shared_prefix_refuses_gradient_checkpointing_by_name():
    with pytest.raises(ConfigError, match="warm_start.shared_prefix needs training.warm_start.gradient_checkpointing"):
        config_from_dict({"training": {"warm_start": {"gradient_checkpointing": True}}})
    cfg = config_from_dict({"training": {"warm_start": {"gradient_checkpointing": True, "shared_prefix": False}}})
    assert cfg.training.warm_start.gradient_checkpointing


@pytest.mark.parametrize("kind, factors", [("constant", [1.0, 1.0, 1.0, 1.0]), ("linear", [1.0, 0.75, 0.5, 0.25])])
def test_the_warm_start_schedule_sets_each_steps_learning_rate(kind, factors):
    from searchr1.training.warmstart import lr_schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=4e-4)
    sched, seen = lr_schedule(opt, kind, total_steps=4), []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([4e-4 * f for f in factors])


def test_an_unknown_warm_start_schedule_names_the_key():
    with pytest.raises(ConfigError, match="lr_schedule"):
        config_from_dict({"training": {"warm_start": {"lr_schedule": "cosine"}}})
