"""Training throughput of peftlab against the peer, measured in the same run on the same machine.

The peer is Hugging Face's Trainer with peft (what most people run): same model, same LoRA, same
SST-2 sentences, batch 32, padding to the longest sentence in each batch, fp32 on CPU. Both train
the same number of optimizer steps; the ratio is peftlab samples/s over the peer's.

    .venv/bin/python bench/throughput.py [--steps 60] [--peft lora]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peftlab_samples_per_s(steps: int, method: str, out: Path) -> float:
    from peftlab.cli import compose_config
    from peftlab.config import validate
    from peftlab.recipe import train

    raw = compose_config(
        ROOT / "conf",
        [f"peft={method}", f"trainer.max_steps={steps}", "logger=csv", "trainer.progress_bar=false",
         "task.max_eval_samples=32", f"data_dir={ROOT / 'data'}"],
    )
    return train(validate(raw), raw, out / "peftlab").metrics["train"]["samples_per_s"]


def peer_samples_per_s(steps: int, method: str, out: Path) -> float:
    """HF Trainer + peft on the same config's model, data and LoRA settings."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peftlab.cli import compose_config
    from peftlab.config import validate
    from peftlab.methods import METHODS
    from peftlab.architectures import architecture_of
    from peftlab.models import load_model, load_tokenizer
    from peftlab.tasks import TASKS

    cfg = validate(compose_config(ROOT / "conf", [f"peft={method}", f"data_dir={ROOT / 'data'}"]))
    task = TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    train_set = task.encode(task.examples("train"), tokenizer)
    model = load_model(cfg.model, task)
    model = METHODS.get(cfg.peft.method, "peft")(cfg.peft).apply(model, architecture_of(model, cfg.model.targets), steps)  # get_peft_model for LoRA
    args = TrainingArguments(
        output_dir=str(out / "peer"), per_device_train_batch_size=32, max_steps=steps, learning_rate=cfg.lr,
        warmup_steps=int(0.06 * steps), weight_decay=0.01, report_to=[], save_strategy="no", logging_steps=10_000,
        use_cpu=True, seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    return steps * 32 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--peft", default="lora", choices=["lora", "full"], help="AdaLoRA is left out: HF Trainer does not call its update hook")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        peer = peer_samples_per_s(args.steps, args.peft, Path(tmp))
        ours = peftlab_samples_per_s(args.steps, args.peft, Path(tmp))
    print(f"peft={args.peft} steps={args.steps} batch=32 fp32 CPU")
    print(f"peer (HF Trainer + peft): {peer:8.1f} samples/s")
    print(f"peftlab:                  {ours:8.1f} samples/s")
    print(f"ratio peftlab / peer:     {ours / peer:8.2f}")


if __name__ == "__main__":
    main()
