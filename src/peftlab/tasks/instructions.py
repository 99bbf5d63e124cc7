"""Instruction tuning: Stanford Alpaca (52,002 instructions, or the 999-record demo) and your own
Alpaca-format JSON / JSON Lines files. The prompts are Alpaca's two templates (with and without an
input); ROUGE-L scores the generated responses, perplexity the reference ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import II

from peftlab.errors import DataError, require
from peftlab.tasks.base import TASKS, FilesConfig, MetricInfo, UserFiles, require_file
from peftlab.tasks.csv_files import read_records
from peftlab.tasks.generation import PERPLEXITY, GenerationConfig, GenerationTask

FORMATS = (".json", ".jsonl")  # a JSON array of records, or one record per line

@dataclass
class InstructionConfig(GenerationConfig):  # templates: conf/task/template/alpaca.yaml
    drop_empty_targets: bool = False  # leave out records whose target is empty (instead of refusing the file)


class InstructionTask(GenerationTask):
    main_metric = "rougeL"
    metric_info = (MetricInfo("rougeL"), PERPLEXITY)

    def text_scores(self, predictions, references):
        from peftlab.metrics.text import rouge

        return rouge(["rougeL"])(predictions, references)

    def records(self, path: Path) -> list[dict[str, Any]]:
        """The file's records (objects of text fields), without those whose target renders empty when
        task.drop_empty_targets is set (the rest are checked by `examples`)."""
        records = read_records(path)
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise DataError(f"{path} record {number} is not an object of named fields (Alpaca: instruction, input, output)")
        if self.cfg.drop_empty_targets:
            records = [r for r in records if not _empty_target(self.cfg.target, r)]
        return records

    def render(self, record, where):
        try:
            return super().render(record, where)
        except DataError as err:
            if "empty target" in str(err) and not self.cfg.drop_empty_targets:
                raise DataError(f"{err}; or set task.drop_empty_targets=true to leave such records out") from None
            raise


def _empty_target(template: str, record: dict[str, Any]) -> bool:
    try:
        return not template.format_map(record).strip()
    except KeyError:
        return False  # a missing field is reported, with the fields there are, when the record is rendered


@dataclass
class AlpacaConfig(InstructionConfig):
    data_dir: str = II("data_dir") + "/alpaca"
    file: str = "alpaca_data.json"  # in data_dir: alpaca_data.json (52,002) or alpaca_en_demo.json (999)
    validation_size: int = 500  # the file's last N records are the validation split, whatever the seed

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.validation_size >= 1, "task.validation_size", self.validation_size, "it must be >= 1")


@TASKS.register("alpaca")
class Alpaca(InstructionTask):
    config_class = AlpacaConfig
    labelled_splits = ("train", "validation")
    unlabelled_note = " (Alpaca is one file: its last task.validation_size records are the validation split)"

    def split_file(self, split):
        return Path(self.cfg.data_dir) / self.cfg.file

    def read(self, split):
        records = self.records(require_file(self.split_file(split), f"Alpaca file ({self.cfg.file})"))
        n = self.cfg.validation_size
        if n >= len(records):
            raise DataError(f"task.validation_size={n} leaves no training records: {self.split_file(split)} has {len(records)}; allowed: 1 to {len(records) - 1}")
        return records[-n:] if split == "validation" else records[:-n]


@dataclass
class InstructionFilesConfig(FilesConfig, InstructionConfig):  # JSON arrays or JSON Lines of records
    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("train_file", "validation_file", "test_file"):
            value = getattr(self, key)
            if value is not None:
                require(Path(value).suffix.lower() in FORMATS, f"task.{key}", value, f"allowed formats: {', '.join(FORMATS)}")


@TASKS.register("instruction_files")
class InstructionFiles(UserFiles, InstructionTask):
    """Your own instruction data: the fields the templates name (task.prompt, task.target)."""

    config_class = InstructionFilesConfig

    def read(self, split):
        return self.records(require_file(self.split_file(split), self.file_description(split)))
