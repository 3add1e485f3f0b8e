"""The rows' shared first tokens, computed once: the forward both trainers use on CPU.

Every warm-start trace and every GRPO rollout opens with the same system prompt and tool schema (~300 of
~800 tokens on the tiny profile). `last_hidden` runs those tokens once per batch and repeats their keys and
values to every row, gradients included; `completion_logps` is GRPO's log-prob function on top of it,
projecting through the LM head only the tokens the loss counts.
"""

from __future__ import annotations

from searchr1.agent.generators import common_prefix_len

MIN_SHARED_PREFIX = 16  # below this a separate prefix forward costs more than it saves
# Config fields that change the LM head's output beyond `logits / temperature` (TRL's fused head reads them):
# a model that sets one is scored by TRL's own function instead.
SCALED_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                      "logits_scaling")


def shared_prefix_len(input_ids, attention_mask) -> int:
    """How many first tokens every row of a right-padded batch shares, each row keeping one token of its own
    (the rule of the generator's shared prefix, `common_prefix_len`, on the rows' real tokens)."""
    lengths = attention_mask.sum(1).tolist()
    rows = [ids[:n] for ids, n in zip(input_ids.tolist(), lengths, strict=True)]
    return max(0, min(common_prefix_len(rows), min(lengths) - 1))


def last_hidden(model, input_ids, attention_mask, *, shared_prefix: bool = False):
    """The decoder's last hidden states of a right-padded batch.

    With `shared_prefix`, the rows' common first tokens (a trace's system prompt and tool schema: ~300 of
    ~800) are computed once, as a batch of one, and their keys and values repeated to every row, which then
    computes only its own tokens; the gradient of every row flows back through the one prefix. Same function
    of the weights as the plain forward (up to float summation order; tests/test_warmstart_prefix.py). HF's
    gradient checkpointing drops a passed cache, so this needs it off (WarmStartConfig checks).
    """
    import torch

    n = shared_prefix_len(input_ids, attention_mask) if shared_prefix else 0
    if n < MIN_SHARED_PREFIX:
        return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = input_ids.shape[0]
    prefix = model.model(input_ids=input_ids[:1, :n], use_cache=True)
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(rows)  # differentiable: each row's gradient reaches the prefix's keys/values
    rest = model.model(input_ids=input_ids[:, n:], attention_mask=attention_mask, past_key_values=cache,
                       use_cache=True).last_hidden_state
    return torch.cat([prefix.last_hidden_state.expand(rows, -1, -1), rest], 1)


def plain_lm_head(model) -> bool:
    """Whether the model's next-token distribution is softmax(lm_head(hidden) / temperature): no soft-capping or
    scaling of the logits, a decoder at `model.model` and the head at `model.lm_head` (Llama, Qwen2, Qwen3)."""
    cfg = model.config.get_text_config()
    return (all(getattr(cfg, f, None) is None for f in SCALED_HEAD_FIELDS)
            and hasattr(model, "model") and model.get_output_embeddings() is getattr(model, "lm_head", None))


def completion_logps(model, input_ids, attention_mask, logits_to_keep: int, scored, *, temperature: float = 1.0,
                     entropy: bool = False):
    """Log-probabilities (and entropies) of the last `logits_to_keep` tokens of each row, as TRL's GRPO
    computes them, on a batch of left-padded prompts followed by right-padded completions.

    Rows are shifted left over their padding (then right-padded, the layout `last_hidden` shares a prefix
    in), and only the positions `scored` marks (B x logits_to_keep: the tokens the loss counts, not the
    tool's text) go through the LM head — TRL's fused head on CPU projects every position. Unscored
    positions hold 0, as in TRL's output. Returns (logps, entropies or None), float32.
    """
    import torch

    rows, width = input_ids.shape
    lengths = attention_mask.sum(1)
    lead = (attention_mask.cumsum(1) == 0).sum(1)  # each row's left padding
    device = input_ids.device  # every index and output tensor beside the model's inputs (CPU or GPU)
    cols = torch.arange(width, device=device)
    if not torch.equal(attention_mask.bool(), (cols >= lead[:, None]) & (cols < (lead + lengths)[:, None])):
        raise ValueError("completion_logps: each row's attention mask must be one run of ones (padding at the ends)")
    shifted = (cols + lead[:, None]).clamp(max=width - 1)
    ids = input_ids.gather(1, shifted)
    mask = (cols < lengths[:, None]).to(attention_mask.dtype)
    hidden = last_hidden(model, ids, mask, shared_prefix=True)
    # completion token j of row r is column (width - logits_to_keep + j - lead_r) of the shifted row; the hidden
    # state one column before it predicts it
    pos = torch.arange(logits_to_keep, device=device) + (width - logits_to_keep - 1) - lead[:, None]
    keep = scored.bool()
    row_of = torch.arange(rows, device=device)[:, None].expand(rows, logits_to_keep)
    logits = model.lm_head(hidden[row_of[keep], pos[keep]]).float() / temperature
    logp_all = logits.log_softmax(-1)
    targets = input_ids[:, -logits_to_keep:][keep]
    out = torch.zeros(rows, logits_to_keep, dtype=torch.float32, device=device)
    out = out.masked_scatter(keep, logp_all.gather(1, targets[:, None])[:, 0])
    if not entropy:
        return out, None
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return out, torch.zeros(rows, logits_to_keep, dtype=torch.float32, device=device).masked_scatter(keep, ent)
