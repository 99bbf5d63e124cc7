"""Entity-level precision, recall and F1 (seqeval, conlleval rules) and token accuracy, as a torchmetrics Metric.

seqeval scores lists of tag strings, which torch.distributed cannot gather. The states here are
tensors of label ids, so Lightning gathers them across DDP ranks like any metric's; the ids become
tags only in `compute`. A gather concatenates each list state into one tensor, losing where one
sentence ends and the next begins, so the sentence lengths are a state of their own.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from peftlab.tasks.token_classification import IGNORE  # special tokens, a word's later pieces, padding


class EntityScores(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, labels: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.labels = list(labels)  # tag of each label id
        self.add_state("preds", default=[], dist_reduce_fx="cat")  # label ids of the labelled positions, sentence after sentence
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")  # labelled positions per sentence

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """preds, target: (sentences, positions) label ids; target is -100 where there is no label."""
        keep = target != IGNORE
        self.preds.append(preds[keep])  # row-major: the sentences stay in order
        self.target.append(target[keep])
        self.lengths.append(keep.sum(dim=1))

    def compute(self) -> dict[str, torch.Tensor]:
        from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

        # .long(): a rank without sentences sends torchmetrics' empty float placeholder, which makes the cat float
        preds, target = dim_zero_cat(self.preds).long(), dim_zero_cat(self.target).long()
        lengths = dim_zero_cat(self.lengths).long().tolist()
        # zero_division=0: no predicted (or no gold) entity scores 0, quietly, as early in training
        precision, recall, f1, _ = precision_recall_fscore_support(
            self._tags(target, lengths), self._tags(preds, lengths), average="micro", zero_division=0
        )
        scores = {"f1": f1, "precision": precision, "recall": recall}
        scores = {name: torch.tensor(float(value), dtype=torch.float64) for name, value in scores.items()}
        scores["accuracy"] = (preds == target).double().mean()
        return scores

    def _tags(self, ids: torch.Tensor, lengths: list[int]) -> list[list[str]]:
        return [[self.labels[i] for i in sentence.tolist()] for sentence in ids.split(lengths)]
