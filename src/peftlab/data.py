"""Batches for training and evaluation: tokenize once, pad each batch only to its longest example.

SST-2 sentences average 13 tokens while a random batch of 32 pads to 40, so two thirds of the work
would be padding. Training batches are therefore drawn from length-sorted pools (the Hugging Face
`group_by_length` idea): still random, but with similar lengths in a batch. Distributed samplers are
built here, not by Lightning, so evaluation splits the data without the duplicates a padded
DistributedSampler adds (every example is scored exactly once).
"""

from __future__ import annotations

import math
import random
from typing import Iterator

import lightning as L
from torch.utils.data import DataLoader, Sampler

from peftlab.budget import batches_per_epoch
from peftlab.tasks import Task

POOL_BATCHES = 50  # batches per length-sorted pool


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of similar length; each of `world` ranks gets the same number of batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.lengths, self.batch_size, self.seed, self.rank, self.world = lengths, batch_size, seed, rank, world
        # Lightning's set_epoch reaches samplers, not batch samplers: count passes here instead, so
        # every epoch gets a new order, the same one for a given seed.
        self.passes = 0

    def __len__(self) -> int:
        return batches_per_epoch(len(self.lengths), self.batch_size, self.world)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.passes)
        self.passes += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        per_rank = math.ceil(len(order) / self.world)
        order += order[: per_rank * self.world - len(order)]  # equal shares, as DistributedSampler does
        mine = order[self.rank :: self.world]
        pool = POOL_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(mine), pool):
            chunk = sorted(mine[start : start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def eval_batches(lengths: list[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Length-sorted batches of this rank's share; no example is repeated or dropped across ranks."""
    mine = sorted(range(len(lengths)), key=lengths.__getitem__)[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, tokenizer, batch_size: int, eval_batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.splits: dict[str, list[dict]] = {}  # encoded: a QA question can be several windows
        self.counts: dict[str, int] = {}  # examples per split, as the task counts them
        self.collate = task.collator(tokenizer)

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "validation"):
            if split not in self.splits:
                examples = self.task.examples(split)
                self.counts[split] = len(examples)
                encode = self.task.encode_train if split == "train" else self.task.encode
                self.splits[split] = encode(examples, self.tokenizer)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, batch_sampler) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_sampler=batch_sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def lengths(self, split: str) -> list[int]:
        return [len(example["input_ids"]) for example in self.splits[split]]

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = LengthGroupedBatchSampler(self.lengths("train"), self.batch_size, self.seed, rank, world)
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader("validation", eval_batches(self.lengths("validation"), self.eval_batch_size, rank, world))
