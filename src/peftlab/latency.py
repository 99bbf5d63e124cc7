"""Inference latency of a trained model, as deployed: with the method's modules (unmerged), and
folded into the base weights (merged, for methods that can be; see `Method.merged`).

One request at a time (batch 1), the model's forward pass on the first validation examples,
after a warm-up; the median, in milliseconds. Generation tasks are timed on the same forward pass
(the prompt's prefill; an encoder-decoder's encoder and first decoder step), not on decoding, which
depends on how long each method's answers are.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from peftlab.errors import ConfigError
from peftlab.record import Latency

WARMUP = 2
TARGET_KEYS = ("labels", "start_positions", "end_positions")  # scoring inputs, not a request's


def median_ms(model, batches: list[dict], device: torch.device, context) -> float:
    times = []
    with torch.inference_mode(), context():
        for i, batch in enumerate(batches[:WARMUP] + batches):
            inputs = {k: v.to(device) for k, v in batch.items()}
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def measure(model, method, task, examples: list[dict], collate, n: int, precision) -> Latency:
    """Latency on the first `n` of `examples` (encoded); leaves `model` as it was."""
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
        unmerged = median_ms(model, requests, device, precision.forward_context)
        try:
            merged_model = method.merged(copy.deepcopy(model))  # merging folds in place: keep the run's model
        except ConfigError:  # bottleneck adapters, prefix / prompt tuning: no plain architecture holds them
            merged = None
        else:
            merged = median_ms(merged_model.eval(), requests, device, precision.forward_context)
            del merged_model
    finally:
        model.train(was_training)
    return Latency(examples=len(requests), batch_size=1, unmerged_ms=unmerged, merged_ms=merged, device=device.type)
