"""GLUE SST-2: binary sentiment of movie-review sentences (67,349 train / 872 dev)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from omegaconf import II

from peftlab.tasks.base import TASKS, TaskConfig, require_file
from peftlab.tasks.text_classification import TextClassificationTask

FILES = {"train": "train.tsv", "validation": "dev.tsv"}


@dataclass
class Sst2Config(TaskConfig):
    data_dir: str = II("data_dir") + "/glue/SST-2"  # holds train.tsv and dev.tsv (header: sentence, label)


@TASKS.register("sst2")
class Sst2(TextClassificationTask):
    config_class = Sst2Config
    given_labels = ["0", "1"]
    unlabelled_note = " (GLUE's test labels are not public)"

    def split_file(self, split):
        return Path(self.cfg.data_dir) / FILES[split]

    def read(self, split):
        path = require_file(self.split_file(split), f"SST-2 {split} file")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            return [{"texts": (row["sentence"].strip(),), "label": row["label"]} for row in reader]
