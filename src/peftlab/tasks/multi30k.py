"""Multi30k (Elliott et al., 2016), task 1: translate English image captions into German.
29,000 train / 1,014 validation / 1,000 test (test_2016_flickr) sentence pairs; sacreBLEU and chrF
of the generated translation, and perplexity of the reference one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import II

from peftlab.errors import DataError
from peftlab.tasks.base import TASKS, MetricInfo, require_file
from peftlab.tasks.generation import PERPLEXITY, GenerationConfig, GenerationTask

FILES = {"train": "train", "validation": "val", "test": "test_2016_flickr"}  # + .en / .de


@dataclass
class Multi30kConfig(GenerationConfig):
    data_dir: str = II("data_dir") + "/multi30k"
    max_length: int = 128
    max_new_tokens: int = 64


@TASKS.register("multi30k")
class Multi30k(GenerationTask):
    config_class = Multi30kConfig
    main_metric = "bleu"
    metric_info = (MetricInfo("bleu"), MetricInfo("chrf"), PERPLEXITY)
    labelled_splits = ("train", "validation", "test")

    def split_file(self, split):
        return Path(self.cfg.data_dir) / f"{FILES[split]}.en"

    def text_scores(self, predictions, references):
        from peftlab.metrics.text import bleu_chrf

        return bleu_chrf(predictions, references)

    def read(self, split):
        sides = {}
        for lang in ("en", "de"):
            path = require_file(Path(self.cfg.data_dir) / f"{FILES[split]}.{lang}", f"Multi30k {split} file")
            sides[lang] = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
        if len(sides["en"]) != len(sides["de"]):
            raise DataError(f"Multi30k {split}: {FILES[split]}.en has {len(sides['en'])} lines but {FILES[split]}.de {len(sides['de'])}; they must align line by line")
        return [{"en": en.strip(), "de": de.strip()} for en, de in zip(sides["en"], sides["de"])]
