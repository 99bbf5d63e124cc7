"""SemEval-2010 Task 8's official score: the macro-averaged F1 over the 9 relation types, Other
excluded, with directionality taken into account (semeval2010_task8_scorer-v1.2.pl, "(9+1)-way
evaluation taking directionality into account").

Per relation type r: a prediction is correct only with the right type *and* direction;
P_r = correct_r / predictions of type r (either direction), R_r = correct_r / gold examples of
type r, F1_r = 2 P R / (P + R); the score is the mean of F1_r over the types in the gold labels.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

OTHER = "Other"


def relation_type(label: str) -> str:
    """"Cause-Effect(e2,e1)" -> "Cause-Effect"."""
    return label.split("(", 1)[0]


class DirectedMacroF1(Metric):
    """Accumulates the confusion matrix over the directed labels; scores it at compute()."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        self.labels = list(labels)
        n = len(self.labels)
        self.add_state("confusion", default=torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n = len(self.labels)
        index = target.long() * n + preds.long()
        self.confusion += torch.bincount(index, minlength=n * n).reshape(n, n)

    def compute(self) -> torch.Tensor:
        return torch.tensor(official_macro_f1(self.confusion, self.labels), dtype=torch.float64)


def official_macro_f1(confusion: torch.Tensor, labels: list[str]) -> float:
    """The official score from a (gold x predicted) confusion matrix over directed labels, in [0, 1]."""
    types = [relation_type(label) for label in labels]
    gold_types = sorted({types[i] for i in range(len(labels)) if confusion[i].sum() > 0} - {OTHER})
    f1s = []
    for kind in gold_types:
        members = [i for i, t in enumerate(types) if t == kind]
        correct = sum(int(confusion[i, i]) for i in members)  # the exact directed label
        proposed = int(confusion[:, members].sum())
        gold = int(confusion[members, :].sum())
        p = correct / proposed if proposed else 0.0
        r = correct / gold if gold else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0
