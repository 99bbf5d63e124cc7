"""Inference latency of a trained model, as deployed: with the method's modules (unmerged), and
folded into the base weights (merged, for methods that can be; see `Method.merged`).

One request at a time (batch 1), the model's forward pass on the first validation examples,
after a warm-up; the median, in milliseconds. Generation tasks are timed on the same forward pass
(the prompt's prefill; an encoder-decoder's encoder and first decoder step), not on decoding, which
depends on how long each method's answers are.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch
from lightning.pytorch.utilities import rank_zero_warn

from peftlab.errors import ConfigError
from peftlab.record import Latency

WARMUP = 2
TARGET_KEYS = ("labels", "start_positions", "end_positions")  # scoring inputs, not a request's


def median_ms(model, batches: list[dict], device: torch.device, context) -> float:
    times, warmup = [], batches[:WARMUP]  # a split of one example warms up on it once
    with torch.inference_mode(), context():
        for i, batch in enumerate(warmup + batches):
            inputs = {k: v.to(device) for k, v in batch.items()}
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= len(warmup):
                times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def fits_twice(model, device: torch.device) -> bool:
    """Whether a second copy of the model fits in the device's free memory, with a margin."""
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):  # not a POSIX system that reports it
            return True
    return 1.5 * size < free


def measure(model, method, task, examples: list[dict], collate, n: int, precision) -> Latency | None:
    """Latency on the first `n` of `examples` (encoded), or None if the forward pass fails (the
    run is still recorded, with a warning); leaves `model` as it was."""
    config = model.config
    requests = []
    for example in examples[:n]:
        batch = task.model_inputs(collate([example]))
        request = {k: v for k, v in batch.items() if k not in TARGET_KEYS and isinstance(v, torch.Tensor)}
        if config.is_encoder_decoder and "decoder_input_ids" not in request:  # T5: the encoder and the first decoder step
            request["decoder_input_ids"] = torch.full((1, 1), config.decoder_start_token_id, dtype=torch.long)
        requests.append(request)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        try:
            unmerged = median_ms(model, requests, device, precision.forward_context)
        except Exception as err:  # noqa: BLE001 -- a side measurement must not lose the finished run
            rank_zero_warn(f"latency: not measured, the batch-1 forward pass failed: {type(err).__name__}: {err}")
            return None
        merged = None
        if not fits_twice(model, device):
            rank_zero_warn("latency: no merged timing, a copy of the model to merge would not fit in free memory")
            return Latency(len(requests), 1, unmerged, None, device.type)
        try:
            merged_model = method.merged(copy.deepcopy(model))  # merging folds in place: keep the run's model
        except ConfigError:  # bottleneck adapters, prefix / prompt tuning: no plain architecture holds them
            pass
        except Exception as err:  # noqa: BLE001 -- a side measurement must not lose the finished run
            rank_zero_warn(f"latency: no merged timing, merging a copy failed: {type(err).__name__}: {err}")
        else:
            merged = median_ms(merged_model.eval(), requests, device, precision.forward_context)
            del merged_model
    finally:
        model.train(was_training)
    return Latency(examples=len(requests), batch_size=1, unmerged_ms=unmerged, merged_ms=merged, device=device.type)
