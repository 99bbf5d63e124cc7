"""SQuAD v1.1 exact match and F1 of extractive QA, as a torchmetrics Metric.

A question's windows arrive in any order and any batch (evaluation batches are length-sorted) and,
under DDP, on different ranks. So `update` keeps only tensors, per window: its question's
example_id and its best span (characters and score), which Lightning gathers like any metric's
states; `compute` then picks each question's best window and scores that text against all its
reference answers with the official normalisation (torchmetrics' `squad`, the official script's code).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.text.squad import squad
from torchmetrics.utilities import dim_zero_cat

STATES = ("example_id", "start_char", "end_char", "score")


class SquadScores(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, examples: list[dict[str, Any]], max_answer_length: int, **kwargs) -> None:
        super().__init__(**kwargs)
        # The task's list, by example_id, shared and not copied: it grows as the task encodes splits.
        self.examples = examples
        self.max_answer_length = max_answer_length
        for name in STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor, example_id: torch.Tensor) -> None:
        """logits: (windows, tokens); offsets: (windows, tokens, 2) characters, -1 outside the context."""
        score, start_char, end_char = best_spans(start_logits, end_logits, offsets, self.max_answer_length)
        for name, value in zip(STATES, (example_id, start_char, end_char, score)):
            getattr(self, name).append(value)

    def compute(self) -> dict[str, torch.Tensor]:
        best: dict[int, tuple[tuple[float, int], int, int]] = {}
        for example, start, end, score in zip(*(dim_zero_cat(getattr(self, name)).tolist() for name in STATES)):
            rank = (score, -start)  # ties go to the earlier span, whatever order the windows came in
            if example not in best or rank > best[example][0]:
                best[example] = (rank, start, end)
        preds, targets = [], []
        for example in sorted(best):
            _, start, end = best[example]
            row = self.examples[example]
            preds.append({"id": str(example), "prediction_text": row["context"][start:end] if start >= 0 else ""})
            targets.append({"id": str(example), "answers": row["answers"]})
        return {name: value / 100 for name, value in squad(preds, targets).items()}  # squad gives percentages


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets: torch.Tensor, max_answer_length: int):
    """Per window, the highest start + end logit over the valid spans (start <= end, at most
    max_answer_length tokens, both ends in the context): (score, start char, end char). A window
    with no valid span scores -inf and points at characters -1."""
    start_logits, end_logits = start_logits.float(), end_logits.float()
    tokens = start_logits.shape[1]
    in_context = offsets[..., 0] >= 0
    band = torch.ones(tokens, tokens, dtype=torch.bool, device=offsets.device).triu().tril(max_answer_length - 1)
    valid = band & in_context[:, :, None] & in_context[:, None, :]
    spans = (start_logits[:, :, None] + end_logits[:, None, :]).masked_fill(~valid, float("-inf"))
    score, flat = spans.flatten(1).max(dim=1)
    windows = torch.arange(len(flat), device=flat.device)
    return score, offsets[windows, flat // tokens, 0], offsets[windows, flat % tokens, 1]
