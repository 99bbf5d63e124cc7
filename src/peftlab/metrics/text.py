"""Scores of generated text: perplexity of the references, and ROUGE / BLEU / chrF of what the model wrote.

Under DDP every rank generates for its share of the examples, so `update` keeps only tensors (each
generated answer's token ids, flattened, with its length and example_id), which Lightning gathers
like any metric's states; `compute` decodes them and scores the whole split at once, since BLEU is
a corpus-level score, not a mean of sentence scores. ROUGE is torchmetrics' (no stemming, best
over each example's references, F-measure); BLEU and chrF are sacreBLEU's own (13a tokenisation,
its default signature), so the numbers read as the papers' do.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

TextScorer = Callable[[list[str], list[list[str]]], dict[str, float]]


def rouge(keys: Sequence[str]) -> TextScorer:
    """ROUGE F-measures (`rouge1`, `rouge2`, `rougeL`), best over each example's references."""

    def score(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        from torchmetrics.functional.text.rouge import rouge_score

        values = rouge_score(predictions, references, rouge_keys=tuple(keys), accumulate="best")
        return {key: float(values[f"{key}_fmeasure"]) for key in keys}

    return score


def bleu_chrf(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU and chrF, as fractions (sacreBLEU prints them x100)."""
    import sacrebleu

    streams = [list(refs) for refs in zip(*references)]  # sacreBLEU takes one list per reference position
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, streams).score / 100,
        "chrf": sacrebleu.corpus_chrf(predictions, streams).score / 100,
    }


def no_text_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Language modelling: the continuations are for reading; perplexity is the score."""
    return {}


class GenerationScores(Metric):
    full_state_update = False

    def __init__(self, references: list[dict[str, Any]], decode: Callable[[list[int]], str], text_scores: TextScorer, **kwargs) -> None:
        super().__init__(**kwargs)
        # The task's list, by example_id ({"prompt", "references"}), shared: it grows as splits are encoded.
        self.references = references
        self.decode, self.text_scores = decode, text_scores
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("target_tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("example_id", "lengths", "tokens"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.last_predictions: Optional[list[dict[str, Any]]] = None

    def update(self, loss: torch.Tensor, target_tokens: torch.Tensor, example_id: torch.Tensor, generated: list[torch.Tensor]) -> None:
        """loss: the batch's mean over its target tokens; generated: the new tokens of each example
        in `example_id` (those the task generates for)."""
        self.nll += loss.detach().double() * target_tokens
        self.target_tokens += target_tokens
        if len(example_id):
            self.example_id.append(example_id)
            self.lengths.append(torch.tensor([len(g) for g in generated], device=example_id.device))
            self.tokens.append(torch.cat(generated) if generated else example_id.new_zeros(0))

    def compute(self) -> dict[str, torch.Tensor]:
        values = {"perplexity": torch.tensor(math.exp(min(float(self.nll / self.target_tokens.clamp(min=1)), 700.0)))}
        self.last_predictions = None  # none generated (language modelling): no predictions file
        if self.example_id:
            ids, lengths, tokens = (dim_zero_cat(getattr(self, name)).tolist() for name in ("example_id", "lengths", "tokens"))
            starts = [0]
            for n in lengths:
                starts.append(starts[-1] + n)
            texts = {i: self.decode(tokens[starts[k] : starts[k + 1]]) for k, i in enumerate(ids)}
            order = sorted(texts)  # the split's order, whatever the batches or ranks
            self.last_predictions = [
                {"prompt": self.references[i]["prompt"], "reference": self.references[i]["references"][0],
                 **({"references": self.references[i]["references"]} if len(self.references[i]["references"]) > 1 else {}),
                 "prediction": texts[i]}
                for i in order
            ]  # fmt: skip
            scores = self.text_scores([texts[i] for i in order], [self.references[i]["references"] for i in order])
            values.update({name: torch.tensor(value) for name, value in scores.items()})
        return values
