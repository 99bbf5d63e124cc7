"""Training throughput of peftlab against Hugging Face's Trainer + peft, in one run on one machine.

Each side trains in a fresh process of its own. Both train the same model with the same method
settings, learning rate, schedule, warm-up, weight decay, gradient clipping, batch size and number of
optimizer steps, on SST-2, padding each batch to its longest sentence; then both score all of SST-2's
validation split. The peers:

- `group_by_length`: the Trainer with its length-grouped sampler, the strongest stock set-up;
- `group_by_length bf16`: the same with `bf16=True` (autocast), where the device computes bf16;
- `random batches`: the Trainer's default sampler.

peftlab runs its `trainer=cpu` (or `trainer=gpu` on a CUDA machine) preset as it is. Give a number
of steps that is a multiple of 50: the Trainer's sampler sorts pools of 50 batches longest first, so
a run that stops inside a pool has trained on longer sentences than the average (peftlab's pools are
shuffled), and its samples/s would be unfairly low. The ratio is
peftlab's samples/s over each peer's. GFLOP/s counts the matmuls of the model's Linear layers, on the
real (not padding) tokens: 2 x weights forward, 2 x weights for the gradient of the inputs, 2 x the
trained weights for their own gradient (attention's score matmuls are left out). The peak it is
shared against is measured here, with a large torch matmul in the precision each side trains in.

    .venv/bin/python bench/throughput.py                         # LoRA and full FT, 100 steps each
    .venv/bin/python bench/throughput.py --peft lora --steps 60
    .venv/bin/python bench/throughput.py --steps 0               # one whole epoch (the GPU comparison)
    .venv/bin/python bench/throughput.py --set trainer.fast_dropout=false   # peftlab with an override
    .venv/bin/python bench/throughput.py --repeats 2             # each side twice, alternating: mean and range
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


@dataclass
class Result:
    name: str
    samples_per_s: float
    tokens_per_s: float
    accuracy: float
    precision: str  # "fp32" or "bf16", for the peak it is shared against
    peak_mb: float  # CUDA's peak allocation, or the process's peak resident set while it trained


def matmul_peak_gflops(device: str, dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    """The best of `repeats` square matmuls: what this device's torch does at its fastest."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_token(model) -> float:
    """Linear-layer matmul FLOPs of one training token (see the module's docstring)."""
    import torch

    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in linear)
    trained = sum(w.numel() for w in linear if w.requires_grad)
    return 4 * total + 2 * trained


def compose(method: str, overrides: list[str]):
    from peftlab.cli import compose_config
    from peftlab.config import validate

    raw = compose_config(ROOT / "conf", [f"peft={method}", f"data_dir={ROOT / 'data'}", *overrides])
    return raw, validate(raw)


def run_peftlab(method: str, steps: int, gpu: bool, extra: list[str], out: Path) -> tuple[Result, float]:
    from peftlab.recipe import train

    overrides = ["trainer=gpu"] if gpu else []
    overrides += [f"trainer.batch_size={BATCH}", f"trainer.max_steps={steps or -1}", "logger=csv", "trainer.progress_bar=false", "trainer.latency_examples=0", *extra]
    raw, cfg = compose(method, overrides)
    run = train(cfg, raw, out / f"peftlab-{method}")
    record = run.record
    precision = "bf16" if "bf16" in record.train.precision else "fp32"
    result = Result("peftlab", record.train.samples_per_s, record.train.tokens_per_s, record.eval.values["accuracy"],
                    precision, record.memory.peak_mb)  # fmt: skip
    return result, flops_per_token(run.model)


def run_peer(method: str, steps: int, gpu: bool, sampling: str, bf16: bool, out: Path) -> Result:
    """HF Trainer + peft on peftlab's model, data and method settings (peft's get_peft_model for LoRA)."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from peftlab.architectures import architecture_of
    from peftlab.methods import METHODS
    from peftlab.models import load_model, load_tokenizer
    from peftlab.recipe import peak_memory, reset_peak_memory
    from peftlab.tasks import TASKS

    _, cfg = compose(method, [f"trainer.batch_size={BATCH}"])  # and so the method's own lr
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    train_set = task.encode(task.examples("train"), tokenizer)
    val_set = task.encode(task.examples("validation"), tokenizer)
    epoch_steps = len(train_set) // BATCH
    total = steps or epoch_steps
    set_seed(cfg.seed)  # the head's initialisation, as peftlab's run seeds it
    model = load_model(cfg.model, task)
    method_obj = METHODS.get(cfg.peft.method, "peft")(cfg.peft)
    model = method_obj.apply(model, architecture_of(model, cfg.model.targets), total)

    pad = DataCollatorWithPadding(tokenizer)
    counted = {"tokens": 0}

    def collate(features):
        batch = pad(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class MethodStep(TrainerCallback):
        """peft's AdaLoRA asks for update_and_allocate after each optimizer step; the Trainer does not call it."""

        def on_optimizer_step(self, args, state, control, **kwargs):
            method_obj.after_optimizer_step(model, state.global_step)

    args = TrainingArguments(
        output_dir=str(out / "peer"), per_device_train_batch_size=BATCH, per_device_eval_batch_size=128,
        max_steps=total, learning_rate=cfg.lr, warmup_steps=int(0.06 * total), weight_decay=0.01,
        max_grad_norm=1.0, lr_scheduler_type="linear", bf16=bf16, use_cpu=not gpu, seed=cfg.seed,
        train_sampling_strategy=sampling, report_to=[], save_strategy="no", logging_steps=10_000,
        dataloader_num_workers=2 if gpu else 0, dataloader_pin_memory=gpu, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collate, callbacks=[MethodStep()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would break up the bench's table
    reset_peak_memory()
    start = time.perf_counter()
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = peak_memory("cuda" if gpu else "cpu")["peak_mb"]
    tokens = counted["tokens"]
    predictions = trainer.predict(val_set)
    logits = predictions.predictions[0] if isinstance(predictions.predictions, tuple) else predictions.predictions
    accuracy = float(np.mean(logits.argmax(-1) == predictions.label_ids))
    name = "HF Trainer + peft, " + ("group_by_length" if sampling == "group_by_length" else "random batches") + (" bf16" if bf16 else "")
    return Result(name, total * BATCH / seconds, tokens / seconds, accuracy, "bf16" if bf16 else "fp32", peak_mb)


def in_fresh_process(side, *args):
    """Run one side in a process of its own. In one long process the later sides trained slower
    (peftlab's full FT, 8th: 225 samples/s, against 247 as the 3rd of a shorter run), and each side's
    peak memory is then its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(side, *args).result()


def bf16_supported(gpu: bool) -> bool:
    if gpu:
        import torch

        return torch.cuda.is_bf16_supported()
    from peftlab.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per side; 0: one whole epoch")
    parser.add_argument("--peft", nargs="+", default=["lora", "full"], choices=["lora", "full", "adalora"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for peftlab's side")
    parser.add_argument("--no-random-peer", action="store_true", help="leave out the random-batch peer (it is the slowest)")
    parser.add_argument("--repeats", type=int, default=1, help="train every side this many times, in alternating order "
                        "(this machine's speed drifts from minute to minute); the table then shows mean samples/s and their range")  # fmt: skip
    args = parser.parse_args()
    if args.steps % 50:
        parser.error(f"--steps {args.steps}: give a multiple of 50 (the Trainer's length pools are 50 batches), or 0 for an epoch")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more")
    from peftlab.errors import PeftlabError

    for method in args.peft:  # a bad --set fails here, in one line, not in a child process after the peers trained
        try:
            compose(method, args.set)
        except PeftlabError as err:
            parser.error(f"--set {' '.join(args.set)}: {err}")

    import torch

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    bf16 = bf16_supported(gpu)
    peak = {"fp32": matmul_peak_gflops(device, "fp32")}
    if bf16:
        peak["bf16"] = matmul_peak_gflops(device, "bf16")
    where = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# {datetime.date.today()} · {where} · torch {torch.__version__} · SST-2, MiniLM, batch {BATCH}, "
          f"{args.steps or 'one epoch of'} steps · matmul peak " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        for method in args.peft:
            peers = [("group_by_length", False)] + ([("group_by_length", True)] if bf16 else [])
            peers += [] if args.no_random_peer else [("random", False)]
            sides = [(run_peer, method, args.steps, gpu, sampling, half) for sampling, half in peers]
            sides.append((run_peftlab, method, args.steps, gpu, args.set))
            runs: list[list] = [[] for _ in sides]
            for repeat in range(args.repeats):  # every other round in reverse: drift then favours no side
                out = Path(tmp) / f"{method}-{repeat}"  # each round's runs in folders of their own
                out.mkdir()
                for i in range(len(sides)) if repeat % 2 == 0 else reversed(range(len(sides))):
                    runs[i].append(in_fresh_process(*sides[i], out))
            flops = runs[-1][0][1]
            runs[-1] = [result for result, _ in runs[-1]]
            results = [mean_result(r) for r in runs]
            ours = results[-1]
            ranges = ["" if len(r) == 1 else f"{min(x.samples_per_s for x in r):.0f}-{max(x.samples_per_s for x in r):.0f}" for r in runs]
            print(f"\npeft={method}" + (f"  (peftlab with {' '.join(args.set)})" if args.set else "")
                  + (f"  (mean of {args.repeats} runs each, alternating)" if args.repeats > 1 else ""))
            print(f"{'':40} {'samples/s':>10} {'tokens/s':>10} {'GFLOP/s':>8} {'of peak':>8} {'peak MB':>8} {'dev acc':>8} {'peftlab ×':>10}"
                  + (f" {'range':>10}" if args.repeats > 1 else ""))  # fmt: skip
            for r, spread in [(ours, ranges[-1]), *zip(results[:-1], ranges[:-1])]:
                gflops = flops * r.tokens_per_s / 1e9
                ratio = "" if r is ours else f"{ours.samples_per_s / r.samples_per_s:9.2f}×"
                print(f"{r.name:40} {r.samples_per_s:10.1f} {r.tokens_per_s:10.0f} {gflops:8.1f} "
                      f"{gflops / peak[r.precision]:7.1%} {r.peak_mb:8.0f} {r.accuracy:8.4f} {ratio:>10}"
                      + (f" {spread:>10}" if args.repeats > 1 else ""))  # fmt: skip


def mean_result(runs: list[Result]) -> Result:
    """One side's repeated runs: mean speed, the largest peak, the accuracy (the same every run: seeded)."""
    n = len(runs)
    return Result(runs[0].name, sum(r.samples_per_s for r in runs) / n, sum(r.tokens_per_s for r in runs) / n,
                  runs[0].accuracy, runs[0].precision, max(r.peak_mb for r in runs))  # fmt: skip


if __name__ == "__main__":
    main()
