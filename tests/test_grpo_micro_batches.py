"""A GRPO step's rollouts trained in micro-batches of neighbouring length (training.grpo.micro_batch_size)."""

from __future__ import annotations

import pytest
import torch

from searchr1.training.grpo import length_micro_batches


def _batch(prompt_lens: list[int], completion_lens: list[int], pw: int = 6, cw: int = 10) -> dict:
    """A scored generation batch as TRL hands it over: prompts left-padded, completions right-padded."""
    rows = len(prompt_lens)
    prompt_mask = torch.tensor([[0] * (pw - p) + [1] * p for p in prompt_lens])
    completion_mask = torch.tensor([[1] * c + [0] * (cw - c) for c in completion_lens])
    ids = torch.arange(rows * (pw + cw)).reshape(rows, pw + cw)
    return {"prompt_ids": ids[:, :pw] * prompt_mask, "prompt_mask": prompt_mask,
            "completion_ids": ids[:, pw:] * completion_mask, "completion_mask": completion_mask,
            "tool_mask": completion_mask.clone(), "old_per_token_logps": -completion_mask.float(),
            "advantages": torch.arange(rows, dtype=torch.float32), "num_items_in_batch": completion_mask.sum(),
            "importance_sampling_ratio": torch.ones(rows, 1), "rollout": [f"r{i}" for i in range(rows)],
            "ref_per_token_logps": None}


def test_rows_of_neighbouring_length_go_together_and_lose_only_padding():
    batch = _batch(prompt_lens=[4, 6, 5, 3], completion_lens=[9, 2, 10, 3])
    parts = length_micro_batches(batch, 2)
    assert [p["rollout"] for p in parts] == [["r1", "r3"], ["r0", "r2"]]  # by completion length
    short, long_ = parts
    assert short["completion_ids"].shape == (2, 3) and long_["completion_ids"].shape == (2, 10)
    assert short["prompt_ids"].shape == (2, 6) and long_["prompt_ids"].shape == (2, 5)  # row 0's 4 + row 2's 5
    for part in parts:
        for key in ("completion_mask", "tool_mask", "old_per_token_logps"):
            assert part[key].shape == part["completion_ids"].shape, key
        assert part["num_items_in_batch"] is batch["num_items_in_batch"]  # the step's normaliser, not the part's
        assert part["importance_sampling_ratio"].shape == (2, 1) and part["ref_per_token_logps"] is None
    for part in parts:  # every real token and every advantage kept, with its row
        for j, name in enumerate(part["rollout"]):
            i = int(name[1:])
            assert part["advantages"][j] == batch["advantages"][i]
            assert part["completion_ids"][j][part["completion_mask"][j] == 1].tolist() == \
                batch["completion_ids"][i][batch["completion_mask"][i] == 1].tolist()
            assert part["prompt_ids"][j][part["prompt_mask"][j] == 1].tolist() == \
                batch["prompt_ids"][i][batch["prompt_mask"][i] == 1].tolist()
    assert sum(int(p["completion_mask"].sum()) for p in parts) == int(batch["completion_mask"].sum())


def test_one_micro_batch_is_the_step_less_its_padding_and_a_bad_split_is_refused():
    (whole,) = length_micro_batches(_batch([4, 4, 4], [5, 7, 2]), 1)
    assert whole["completion_ids"].shape == (3, 7) and whole["prompt_ids"].shape == (3, 4)
    with pytest.raises(ValueError, match="3 rows do not split into 2"):
        length_micro_batches(_batch([4, 4, 4], [5, 7, 2]), 2)


@pytest.mark.parametrize(("prompts", "group", "micro", "passes"),
                         [(4, 4, 4, 4), (4, 4, None, 1), (1, 2, 4, 1), (4, 4, 3, 8), (3, 4, 5, 3), (4, 4, 64, 1)])
def test_micro_batch_size_is_a_cap_on_rows_per_pass(prompts, group, micro, passes):
    """A shrunk step (e.g. the fault-injection chain's 1 prompt x 2 rollouts) is not refused: its passes hold the
    largest number of rows that divides the step and stays within micro_batch_size."""
    from searchr1.training.config import GRPOConfig

    g = GRPOConfig(prompts_per_step=prompts, group_size=group, micro_batch_size=micro)
    assert g.micro_batches == passes
