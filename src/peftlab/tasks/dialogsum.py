"""DialogSum (Chen et al., 2021): summarise a two-person dialogue. ROUGE-1/2/L of the generated
summary, best over the references (the test split has three per dialogue), and perplexity.

The copy in data/ has the official dev (500) and test (500) splits only, not the 12,460-dialogue
train split. So by default the task trains on the dev split and scores the test split (no model
selection is made on it: the final weights are scored); `task.train_file` points at your full train
file (the official `dialogsum.train.jsonl`), and then `task.validation_file` can be the dev split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import II

from peftlab.errors import DataError
from peftlab.tasks.base import TASKS, MetricInfo, require_file
from peftlab.tasks.generation import PERPLEXITY, GenerationConfig, GenerationTask


@dataclass
class DialogSumConfig(GenerationConfig):
    train_file: str = II("data_dir") + "/dialogsum/dialogsum.dev.jsonl"  # the official dev split (see above)
    validation_file: str = II("data_dir") + "/dialogsum/dialogsum.test.jsonl"
    test_file: str = II("data_dir") + "/dialogsum/dialogsum.test.jsonl"


@TASKS.register("dialogsum")
class DialogSum(GenerationTask):
    config_class = DialogSumConfig
    main_metric = "rougeL"
    metric_info = (MetricInfo("rouge1"), MetricInfo("rouge2"), MetricInfo("rougeL"), PERPLEXITY)
    labelled_splits = ("train", "validation", "test")

    def split_file(self, split):
        return Path(getattr(self.cfg, f"{split}_file"))

    def text_scores(self, predictions, references):
        from peftlab.metrics.text import rouge

        return rouge(["rouge1", "rouge2", "rougeL"])(predictions, references)

    def read(self, split):
        path = require_file(self.split_file(split), f"DialogSum {split} file (task.{split}_file)")
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {number}: not JSON Lines ({err.msg})") from None
                # Train and dev have one `summary`; test has summary1..3: all are references, the first trains.
                summaries = [record[k] for k in ("summary", "summary1", "summary2", "summary3") if isinstance(record.get(k), str)]
                if not isinstance(record.get("dialogue"), str) or not summaries:
                    raise DataError(f"{path} line {number}: a DialogSum record has a `dialogue` and a `summary` (or summary1..3); it has {sorted(record)}")
                rows.append({**record, "summary": summaries[0], "references": summaries})
        return rows
