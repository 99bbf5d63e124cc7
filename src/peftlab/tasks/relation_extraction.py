"""Relation extraction, SemEval-2010 Task 8: which of 19 directed relations (9 types x 2 directions,
plus Other) holds between the two marked nominals of a sentence.

The entity markers stay in the text (`<e1>`, `</e1>`, `<e2>`, `</e2>`), so the encoder sees where
the entities are through word pieces it already has: new special tokens would need new embeddings,
which parameter-efficient methods keep frozen. The release has train and test files only; the
validation split is the last `validation_size` sentences of the train file, always the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import II

from peftlab.errors import DataError, require
from peftlab.tasks.base import TASKS, MetricInfo, TaskConfig, require_file
from peftlab.tasks.text_classification import TextClassificationTask

FILES = {"train": "TRAIN_FILE.TXT", "validation": "TRAIN_FILE.TXT", "test": "TEST_FILE_FULL.TXT"}
MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")
RELATIONS = ("Cause-Effect", "Component-Whole", "Content-Container", "Entity-Destination", "Entity-Origin",
             "Instrument-Agency", "Member-Collection", "Message-Topic", "Product-Producer")  # fmt: skip
LABELS = ["Other"] + [f"{r}({a},{b})" for r in RELATIONS for a, b in (("e1", "e2"), ("e2", "e1"))]


@dataclass
class SemEvalConfig(TaskConfig):
    data_dir: str = II("data_dir") + "/semeval2010_task8"
    validation_size: int = 800  # sentences held out from the end of the train file (10%)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.validation_size < 8000, "task.validation_size", self.validation_size, "it must be in [1, 8000)")


def read_blocks(path: Path) -> list[dict]:
    """The release's blocks: `id<TAB>"sentence"`, the label, a `Comment:` line, a blank line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for start in range(0, len(lines), 4):
        block = lines[start : start + 4]
        number = start + 1
        if len(block) < 2 or "\t" not in block[0]:
            raise DataError(f"{path} line {number}: expected `id<TAB>\"sentence\"` then a label line")
        example_id, sentence = block[0].split("\t", 1)
        sentence = sentence.strip().strip('"')
        missing = [m for m in MARKERS if m not in sentence]
        if missing:
            raise DataError(f"{path} line {number} (sentence {example_id}): no {missing[0]} marker; a relation sentence marks both entities")
        label = block[1].strip()
        if label not in LABELS:
            raise DataError(f"{path} line {number + 1} (sentence {example_id}): label {label!r} is not one of the 19 SemEval labels")
        rows.append({"texts": (sentence,), "label": label})
    return rows


@TASKS.register("semeval2010")
class SemEval2010(TextClassificationTask):
    config_class = SemEvalConfig
    given_labels = LABELS
    labelled_splits = ("train", "validation", "test")
    main_metric = "f1"
    metric_info = (MetricInfo("f1"), MetricInfo("accuracy"))  # f1: the official directed macro-F1

    def split_file(self, split):
        return Path(self.cfg.data_dir) / FILES[split]

    def read(self, split):
        rows = read_blocks(require_file(self.split_file(split), f"SemEval-2010 Task 8 {split} file"))
        if split == "train":
            return rows[: -self.cfg.validation_size]
        if split == "validation":
            return rows[-self.cfg.validation_size :]
        return rows

    def encode(self, examples, tokenizer):
        encoded = super().encode(examples, tokenizer)
        self.check_markers_fit(examples, tokenizer)
        return encoded

    def check_markers_fit(self, examples, tokenizer) -> None:
        """A sentence cut before its last marker is classified without one of its entities, which
        no metric would show: refuse the max_length that does it, naming the one that does not."""
        through_markers = [text[: max(text.rindex(m) + len(m) for m in ("</e1>", "</e2>"))] for (text,) in (r["texts"] for r in examples)]
        needed = [len(ids) for ids in tokenizer(through_markers)["input_ids"]]  # with the special tokens
        cut = [i for i, n in enumerate(needed) if n > self.cfg.max_length]
        if cut:
            raise DataError(
                f"task {self.cfg.name}: at task.max_length={self.cfg.max_length}, {len(cut)} of {len(examples)} sentences "
                f"would be cut before their last entity marker (the first: {examples[cut[0]]['texts'][0][:60]!r}...); "
                f"allowed: task.max_length >= {max(needed)}, what these sentences need through their markers"
            )

    def metrics(self):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        from peftlab.metrics.relation import DirectedMacroF1

        return MetricCollection({"f1": DirectedMacroF1(LABELS), "accuracy": MulticlassAccuracy(num_classes=len(LABELS), average="micro")})
