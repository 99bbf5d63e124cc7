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
from typing import Callable, Iterator

import lightning as L
import torch
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
        self.skip = 0  # batches of the next pass already trained on before a resume

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue a pass that was interrupted after `batches_done` of epoch `epoch`'s batches."""
        if batches_done >= len(self):  # the checkpoint closed that epoch: the next one starts afresh
            epoch, batches_done = epoch + 1, 0
        self.passes, self.skip = epoch, batches_done

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
        skip, self.skip = self.skip, 0
        return iter(batches[skip:])


def eval_batches(lengths: list[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Length-sorted batches of this rank's share; no example is repeated or dropped across ranks."""
    mine = sorted(range(len(lengths)), key=lengths.__getitem__)[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


class ResumableLoader(DataLoader):
    """The training loader, stateful the way Lightning's fit loop asks (`state_dict` /
    `load_state_dict`): its state is the epoch and the batches the trainer has consumed of it, so a
    resumed run gets exactly the batches the interrupted one had not reached. The count comes from
    Lightning's own progress, not from the iterator, which its prefetching runs one batch ahead of."""

    def __init__(self, *args, consumed: Callable[[], tuple[int, int]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = consumed

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self.consumed()
        return {"epoch": epoch, "batches_done": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(state["epoch"], state["batches_done"])


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, tokenizer, batch_size: int, eval_batch_size: int, num_workers: int, seed: int,
                 pin_memory: bool = False):  # fmt: skip
        super().__init__()
        self.task, self.tokenizer = task, tokenizer
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.pin_memory = pin_memory  # for a GPU: page-locked batches copy to it without blocking the step
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
        if "test" in self.task.labelled_splits and "test" not in self.counts:
            # Read and encoded, then let go: a test file that is missing or malformed, or that the
            # task could not score whole (a cut NER sentence), fails now, before training, not once
            # `peftlab.evaluate RUN split=test` scores the finished run.
            examples = self.task.examples("test")
            self.task.encode(examples, self.tokenizer)
            self.counts["test"] = len(examples)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, split: str, batch_sampler, loader=DataLoader, **extra) -> DataLoader:
        return loader(
            self.splits[split],
            batch_sampler=batch_sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # Each new iterator draws a seed for its workers; from its own generator, not torch's,
            # so where loaders start (an epoch, a validation) does not move dropout's random stream,
            # and a resumed run's stream is the interrupted one's.
            generator=torch.Generator().manual_seed(self.seed),
            **extra,
        )

    def _consumed(self) -> tuple[int, int]:
        """(epoch, batches of it trained on), read from the trainer when it writes a checkpoint."""
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def lengths(self, split: str) -> list[int]:
        return [len(example["input_ids"]) for example in self.splits[split]]

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = LengthGroupedBatchSampler(self.lengths("train"), self.batch_size, self.seed, rank, world)
        return self._loader("train", sampler, ResumableLoader, consumed=self._consumed)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self._loader("validation", eval_batches(self.lengths("validation"), self.eval_batch_size, rank, world))
