"""Token classification (named-entity recognition): one tag per word, from CoNLL-style files.

Words are split into word pieces; only the first piece of each word carries its tag, the others
and the special tokens get -100, which the loss and the metrics skip. Scores are seqeval's
entity-level precision, recall and F1 (the conlleval rules) and token accuracy, over every word of
a split: a task.max_length that would cut a sentence to be scored is refused (training sentences
may be cut).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from omegaconf import II

from peftlab.errors import ConfigError, DataError, require
from peftlab.tasks.base import TASKS, FilesConfig, MetricInfo, Task, TaskConfig, UserFiles, require_file, require_label_set

IGNORE = -100  # the label transformers' loss (and these metrics) skip
DOCSTART = "-DOCSTART-"  # CoNLL's document separator: a boundary, not a sentence


class TokenClassificationTask(Task):
    """Subclasses name their files (`split_file`) and, if not the defaults, their columns."""

    auto_model_class = "AutoModelForTokenClassification"
    main_metric = "f1"
    metric_info = (MetricInfo("f1"), MetricInfo("precision"), MetricInfo("recall"), MetricInfo("accuracy"))
    given_labels: Optional[list[str]] = None  # the tag set in index order; None = every tag seen in training
    token_column, tag_column = 0, -1
    separator: Optional[str] = None  # None = any run of whitespace

    def read(self, split):
        path = require_file(self.split_file(split), self.file_description(split))
        return read_conll(path, self.token_column, self.tag_column, self.separator)

    def file_description(self, split: str) -> str:
        return f"task {self.cfg.name} {split} file"

    @cached_property
    def labels(self) -> list[str]:
        if self.given_labels:
            return [str(label) for label in self.given_labels]
        seen = {tag for row in self.rows("train") for tag in row["tags"]}
        return sorted(seen, key=lambda tag: (tag != "O", tag))  # "O" first, as NER tag sets list it

    def model_kwargs(self) -> dict[str, Any]:
        # The names travel in the model's config, so a saved model reads its own tags.
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {label: i for i, label in enumerate(self.labels)}}  # fmt: skip

    def examples(self, split):
        rows = super().examples(split)
        path = self.split_file(split)
        found = ((tag, f"{path} line {row['line'] + offset}") for row in rows for offset, tag in enumerate(row["tags"]))
        self.check_labels(self.labels, found, kind="tag")
        return rows

    def encode_train(self, examples, tokenizer):
        return self._encode(examples, tokenizer)[1]  # a training sentence cut short only loses some signal

    def encode(self, examples, tokenizer):
        """A split to score: every word must fit, or its entities would drop out of the scores."""
        encoded, encodings = self._encode(examples, tokenizer)
        cut = [i for i, row in enumerate(examples) if max((w for w in encoded.word_ids(i) if w is not None), default=-1) < len(row["tokens"]) - 1]
        if cut:
            lost = sum(len(examples[i]["tokens"]) - 1 - max(w for w in encoded.word_ids(i) if w is not None) for i in cut)
            needed = max(len(ids) for ids in tokenizer([examples[i]["tokens"] for i in cut], is_split_into_words=True)["input_ids"])
            raise ConfigError(
                f"task {self.cfg.name}: at task.max_length={self.cfg.max_length}, {len(cut)} of {len(examples)} sentences to score "
                f"would lose {lost} tagged words to truncation, and their entities would drop out of the scores; "
                f"allowed: task.max_length >= {needed}, the longest of them in word pieces"
            )
        return encodings

    def _encode(self, examples, tokenizer):
        if not tokenizer.is_fast:  # word_ids() comes from the Rust tokenizers only
            raise ConfigError(f"task {self.cfg.name} needs a fast tokenizer (word_ids); {type(tokenizer).__name__} is not one")
        index = {label: i for i, label in enumerate(self.labels)}
        encoded = tokenizer([row["tokens"] for row in examples], is_split_into_words=True,
                            truncation=True, max_length=self.cfg.max_length)  # fmt: skip
        encodings = []
        for i, row in enumerate(examples):
            labels = first_piece_labels(encoded.word_ids(i), [index[tag] for tag in row["tags"]])
            encodings.append({**{k: encoded[k][i] for k in encoded.keys()}, "labels": labels})
        return encoded, encodings

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)  # pads labels with -100

    def loss_weight(self, batch) -> int:
        # The model's loss is a mean over labelled tokens, so weighting by them makes a split's loss per token.
        return int((batch["labels"] != IGNORE).sum())

    def metric_inputs(self, outputs, batch, model):
        return outputs.logits.argmax(dim=-1), batch["labels"]

    def metrics(self):
        from torchmetrics import MetricCollection

        from peftlab.metrics.entity import EntityScores  # torch-heavy: loaded only when scoring

        return MetricCollection({"entities": EntityScores(self.labels)})


def first_piece_labels(word_ids: list[Optional[int]], tags: list[int]) -> list[int]:
    """Each word's tag on its first piece; -100 on its other pieces and on special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else tags[word])
        previous = word
    return labels


def read_conll(path: Path, token_column: int, tag_column: int, separator: Optional[str]) -> list[dict[str, Any]]:
    """Sentences as {"tokens", "tags", "line": the file line of the first token}; blank lines and
    -DOCSTART- lines end a sentence. Every token line must have as many columns as the first one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None
    sentences: list[dict[str, Any]] = []
    current = None  # the sentence being read; None after a boundary
    width = None  # columns of the first token line
    for number, line in enumerate(lines, start=1):
        fields = [field.strip() for field in line.split(separator)] if line.strip() else []
        if not fields or fields[0] == DOCSTART:
            current = None
            continue
        width = width or _check_columns(path, number, len(fields), token_column, tag_column)
        if len(fields) != width:
            raise DataError(f"{path} line {number} has {len(fields)} columns, but the file's first token line has {width}")
        token, tag = fields[token_column], fields[tag_column]
        if not token or not tag:
            raise DataError(f"{path} line {number} has an empty {'token' if not token else 'tag'} column")
        if current is None:
            current = {"tokens": [], "tags": [], "line": number}
            sentences.append(current)
        current["tokens"].append(token)
        current["tags"].append(tag)
    return sentences


def _check_columns(path: Path, number: int, width: int, token_column: int, tag_column: int) -> int:
    for key, column in (("token_column", token_column), ("tag_column", tag_column)):
        if not -width <= column < width:
            raise DataError(f"{path} line {number} has {width} columns, so task.{key}={column} is out of range")
    return width


# -- the tasks ---------------------------------------------------------------------------------
CONLL2003_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


@dataclass
class Conll2003Config(TaskConfig):
    data_dir: str = II("data_dir") + "/conll2003"  # holds train.txt, valid.txt, test.txt


@TASKS.register("conll2003")
class Conll2003(TokenClassificationTask):
    """CoNLL-2003 English NER: `token POS chunk NER` per line; the tag is the last column."""

    config_class = Conll2003Config
    labelled_splits = ("train", "validation", "test")
    # Fixed, so scoring a split does not read train.txt for them ("O" first, then sorted, as for user files).
    given_labels = ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]

    def split_file(self, split):
        return Path(self.cfg.data_dir) / CONLL2003_FILES[split]

    def file_description(self, split):
        return f"CoNLL-2003 {split} file"


@dataclass
class ConllFilesConfig(FilesConfig):  # the files: one token per line, blank lines between sentences
    token_column: int = 0  # positions; negative counts from the end
    tag_column: int = -1
    separator: Optional[str] = None  # null = any whitespace
    labels: Optional[list[str]] = None  # the tag set in index order; null = every tag in train_file, "O" first

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.separator == r"\t":  # Hydra's command line keeps '\t' as two characters
            self.separator = "\t"
        require(self.separator != "", "task.separator", "''", "give a non-empty separator, or null for any whitespace")
        require_label_set("task.labels", self.labels, "tags")


@TASKS.register("conll_files")
class ConllFiles(UserFiles, TokenClassificationTask):
    """Your own CoNLL-style files: a token and a tag column, blank lines between sentences."""

    config_class = ConllFilesConfig
    given_labels = property(lambda self: self.cfg.labels)
    token_column = property(lambda self: self.cfg.token_column)
    tag_column = property(lambda self: self.cfg.tag_column)
    separator = property(lambda self: self.cfg.separator)
