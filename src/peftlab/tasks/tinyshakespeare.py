"""Tiny Shakespeare (Karpathy's char-rnn corpus, 1,115,394 characters): language modelling.

The text is split into its speeches (blocks separated by a blank line, each a speaker's name and
lines); the last `task.validation_fraction` of them is the held-out tail, scored by perplexity per
token. Every speech is a whole target (no prompt), so the loss covers all its tokens but the
first; `task.packing` (on by default) fills each training row with consecutive speeches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import II

from peftlab.errors import DataError, require
from peftlab.tasks.base import TASKS, require_file
from peftlab.tasks.generation import GenerationConfig, GenerationTask


@dataclass
class TinyShakespeareConfig(GenerationConfig):
    data_dir: str = II("data_dir") + "/tinyshakespeare"  # holds input.txt
    validation_fraction: float = 0.1  # the text's last share of speeches is held out
    packing: bool = True
    generate_samples: int = 0  # must stay 0: a speech is all target, there is no prompt to answer
    max_length: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.validation_fraction < 1, "task.validation_fraction", self.validation_fraction, "it must be in (0, 1)")
        require(self.generate_samples == 0, "task.generate_samples", self.generate_samples,
                "it must be 0: language modelling has no prompts to answer (perplexity is its score)")  # fmt: skip


@TASKS.register("tinyshakespeare")
class TinyShakespeare(GenerationTask):
    config_class = TinyShakespeareConfig
    unlabelled_note = " (the held-out tail, task.validation_fraction, is the only scored split)"

    def split_file(self, split):
        return Path(self.cfg.data_dir) / "input.txt"

    def read(self, split):
        text = require_file(self.split_file(split), "Tiny Shakespeare file").read_text(encoding="utf-8")
        speeches = [block.strip() for block in text.split("\n\n") if block.strip()]
        if len(speeches) < 2:
            raise DataError(f"{self.split_file(split)} has {len(speeches)} blocks of text; it needs at least 2 (separated by blank lines) to hold one out")
        cut = len(speeches) - max(1, round(self.cfg.validation_fraction * len(speeches)))
        return [{"text": s} for s in (speeches[cut:] if split == "validation" else speeches[:cut])]
