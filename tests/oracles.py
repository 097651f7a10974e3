"""Independent oracles shared by several test modules."""

from __future__ import annotations

import torch


def transformers_greedy_ids(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """The ``steps`` ids a transformers causal LM picks greedily after ``prompt``, by its own
    forward over the whole sequence each time.

    Not ``generate``: its generation config stops at the end-of-sequence id, or with
    ``min_new_tokens`` forbids it, and a random model picks that id as readily as any.
    """
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]
