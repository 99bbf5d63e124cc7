"""Extractive question answering (SQuAD v1.1): the answer is a span of the paragraph.

A paragraph longer than task.max_length is split into windows ("features") of question + a slice
of the context, neighbouring slices sharing task.doc_stride tokens, so every answer lies whole in
at least one window. One question thus becomes one or more features, and the model scores each
token as the answer's start and end in every window.

Training features point start_positions / end_positions at the answer's tokens, or at the CLS
token (index 0) when the answer is not in that window. Every feature also carries its question's
`example_id` and the character offsets of its context tokens (-1 elsewhere), which the metric
(`peftlab.metrics.span.SquadScores`) needs to turn the best span back into text.

Which split the metric scores: `encode` appends the examples it is given to `encoded_examples` and
numbers each feature's example_id from there, so ids are unique across every split this task
object has encoded. The metric holds that list itself, so whatever split reaches it (training's
validation, after train was encoded; `peftlab.evaluate`'s one split) looks up its own questions,
without `encode` having to know which split it was given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import II

from peftlab.errors import ConfigError, DataError, require
from peftlab.tasks.base import TASKS, FilesConfig, MetricInfo, Task, TaskConfig, UserFiles, require_file

TOKEN_KEYS = ("input_ids", "token_type_ids", "attention_mask")  # what the tokenizer gives; models without token types lack one
SCORING_KEYS = ("example_id", "offsets")  # batch keys for the metric, not for the model's forward pass
OUTSIDE = -1  # the offset of tokens outside the context (question, special tokens, padding)
LAYOUT = '{"data": [{"paragraphs": [{"context": str, "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}'


@dataclass
class QaConfig(TaskConfig):
    max_length: int = 384  # tokens per window: question + context slice + special tokens ([CLS], 2 [SEP] in BERT)
    doc_stride: int = 128  # context tokens that neighbouring windows share (the tokenizer's `stride`)
    max_answer_length: int = 30  # the longest span the metric predicts, in tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.doc_stride < self.max_length, "task.doc_stride", self.doc_stride,
                f"it must be >= 0 and < task.max_length ({self.max_length}): it is the overlap of neighbouring windows")  # fmt: skip
        require(self.max_answer_length >= 1, "task.max_answer_length", self.max_answer_length, "it must be >= 1")


class ExtractiveQaTask(Task):
    """Subclasses name their files (`split_file`, `file_description`); reading and scoring are shared."""

    auto_model_class = "AutoModelForQuestionAnswering"
    main_metric = "f1"
    metric_info = (MetricInfo("f1"), MetricInfo("exact_match"))

    def __init__(self, cfg: QaConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.encoded_examples: list[dict[str, Any]] = []  # every example `encode` was given, by example_id

    def file_description(self, split: str) -> str:
        return f"task {self.cfg.name} {split} file"

    def read(self, split):
        return read_squad(require_file(self.split_file(split), self.file_description(split)))

    def encode(self, examples, tokenizer):
        import numpy as np  # compact arrays: a full SQuAD train split as Python lists would take gigabytes

        if not tokenizer.is_fast:  # offset mappings come from the Rust tokenizers only
            raise ConfigError(f"task {self.cfg.name} needs a fast tokenizer (offset mapping); {type(tokenizer).__name__} is not one")
        windows = self._windows(examples, tokenizer)
        first_id = len(self.encoded_examples)
        self.encoded_examples.extend(examples)
        features = []
        for i, example in enumerate(windows["overflow_to_sample_mapping"]):
            offsets = context_offsets(windows["offset_mapping"][i], windows.sequence_ids(i))
            answers = examples[example]["answers"]  # the first answer trains, as in the SQuAD baselines
            start, end = answer_tokens(offsets, answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0]))
            features.append({
                **{key: np.asarray(windows[key][i], dtype=np.int32) for key in TOKEN_KEYS if key in windows},
                "offsets": np.asarray(offsets, dtype=np.int32),
                "start_positions": start,
                "end_positions": end,
                "example_id": first_id + example,
            })  # fmt: skip
        return features

    def _windows(self, examples, tokenizer):
        questions = [row["question"].lstrip() for row in examples]  # leading spaces would eat window room
        self._check_room(examples, questions, tokenizer)
        return tokenizer(questions, [row["context"] for row in examples], truncation="only_second",
                         max_length=self.cfg.max_length, stride=self.cfg.doc_stride,
                         return_overflowing_tokens=True, return_offsets_mapping=True)  # fmt: skip

    def _check_room(self, examples, questions: list[str], tokenizer) -> None:
        """Each window must hold more context than the overlap; otherwise the Rust tokenizer panics,
        with a backtrace on stderr, so check first."""
        lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        if self.cfg.max_length - lengths[longest] - specials <= self.cfg.doc_stride:
            raise DataError(
                f"task {self.cfg.name}: question {examples[longest]['id']} is {lengths[longest]} tokens, too long for "
                f"task.max_length={self.cfg.max_length} with task.doc_stride={self.cfg.doc_stride} (a window holds the "
                f"question, {specials} special tokens and more context than the overlap); raise max_length or lower doc_stride"
            )

    def collator(self, tokenizer):
        return QaCollator(tokenizer.pad_token_id or 0)

    def model_inputs(self, batch):
        return {key: value for key, value in batch.items() if key not in SCORING_KEYS}

    def metric_inputs(self, outputs, batch, model):
        return outputs.start_logits, outputs.end_logits, batch["offsets"], batch["example_id"]

    def metrics(self):
        from torchmetrics import MetricCollection

        from peftlab.metrics.span import SquadScores  # torch-heavy: loaded only when scoring

        return MetricCollection({"squad": SquadScores(self.encoded_examples, self.cfg.max_answer_length)})


class QaCollator:
    """Pads token ids, masks and offsets (with -1, outside the context) into tensors, so Lightning
    moves the whole batch to the device. A class, not a closure, so dataloader workers can pickle it."""

    def __init__(self, pad_token_id: int) -> None:
        self.pads = {"input_ids": pad_token_id, "token_type_ids": 0, "attention_mask": 0, "offsets": OUTSIDE}

    def __call__(self, features: list[dict[str, Any]]):
        import torch
        from torch.nn.utils.rnn import pad_sequence

        batch = {
            key: pad_sequence([torch.as_tensor(f[key], dtype=torch.long) for f in features], batch_first=True, padding_value=pad)
            for key, pad in self.pads.items()
            if key in features[0]
        }
        for key in ("start_positions", "end_positions", "example_id"):
            batch[key] = torch.tensor([f[key] for f in features])
        return batch


def context_offsets(offsets: list[tuple[int, int]], sequence_ids: list[Optional[int]]) -> list[tuple[int, int]]:
    """Each token's (start, end) characters in the context; (-1, -1) for the question and special tokens."""
    return [span if sequence == 1 else (OUTSIDE, OUTSIDE) for span, sequence in zip(offsets, sequence_ids)]


def answer_tokens(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int]:
    """The first and last token of the answer characters [start_char, end_char) in this window,
    or (0, 0), the CLS token, when the window does not hold the whole answer."""
    context = [t for t, (start, _) in enumerate(offsets) if start != OUTSIDE]
    if offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(t for t in context if offsets[t][0] <= start_char)
    end = min(t for t in context if offsets[t][1] >= end_char)
    return start, end


def read_squad(path: Path) -> list[dict[str, Any]]:
    """Questions of a SQuAD v1.1 JSON file as {"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}} (the layout torchmetrics' SQuAD takes); every answer must be found at its
    answer_start in its context."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err.msg} at line {err.lineno}); a SQuAD file is {LAYOUT}") from None
    rows = []
    for a, article in enumerate(_field(path, data, "data", list, "the file")):
        for p, paragraph in enumerate(_field(path, article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(path, paragraph, "context", str, where)
            for q, qa in enumerate(_field(path, paragraph, "qas", list, where)):
                rows.append(_question(path, qa, context, f"{where}.qas[{q}]"))
    return rows


def _question(path: Path, qa: Any, context: str, where: str) -> dict[str, Any]:
    qid = _field(path, qa, "id", str, where)
    answers = _field(path, qa, "answers", list, f"question {qid}")
    if not answers:
        raise DataError(f"{path}: question {qid} has no answers; SQuAD v1.1 needs at least one (v2's unanswerable questions are not supported)")
    texts, starts = [], []
    for answer in answers:
        text = _field(path, answer, "text", str, f"an answer of question {qid}")
        start = _field(path, answer, "answer_start", int, f"an answer of question {qid}")
        if not text or context[start : start + len(text)] != text:
            raise DataError(
                f"{path}: question {qid}: answer {text!r} is not at answer_start {start} of its context, "
                f"which reads {context[start : start + len(text)]!r} there"
            )
        texts.append(text)
        starts.append(start)
    return {"id": qid, "question": _field(path, qa, "question", str, f"question {qid}"), "context": context,
            "answers": {"text": texts, "answer_start": starts}}  # fmt: skip


def _field(path: Path, node: Any, key: str, kind: type, where: str) -> Any:
    """node[key] if it is a `kind`; otherwise the not-SQuAD-format message, naming where."""
    value = node.get(key) if isinstance(node, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{path} is not in SQuAD format: {where} has no {kind.__name__} {key!r}; the layout is {LAYOUT}")
    return value


# -- the tasks ---------------------------------------------------------------------------------
SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}


@dataclass
class SquadConfig(QaConfig):
    data_dir: str = II("data_dir") + "/squad"  # holds train-v1.1.json and dev-v1.1.json


@TASKS.register("squad")
class Squad(ExtractiveQaTask):
    """SQuAD v1.1: 87,599 train and 10,570 dev questions on Wikipedia paragraphs."""

    config_class = SquadConfig
    unlabelled_note = " (SQuAD's test set is not public)"

    def split_file(self, split):
        return Path(self.cfg.data_dir) / SQUAD_FILES[split]

    def file_description(self, split):
        return f"SQuAD {split} file"


@dataclass
class SquadFilesConfig(FilesConfig, QaConfig):  # the files: SQuAD v1.1-format JSON
    pass


@TASKS.register("squad_files")
class SquadFiles(UserFiles, ExtractiveQaTask):
    """Your own SQuAD v1.1-format JSON files."""

    config_class = SquadFilesConfig
