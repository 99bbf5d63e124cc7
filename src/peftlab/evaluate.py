"""Score a finished run from its folder alone, the way a user would: base model + saved weights.

    python -m peftlab.evaluate RUN_FOLDER [split=validation] [out=DIR]
    peftlab-evaluate RUN_FOLDER split=train

Writes DIR/eval_<split>.json (DIR defaults to the run folder), and a generation task's answers to
DIR/predictions_<split>.jsonl (regenerated: greedy decoding gives training's own answers again).
Nothing of the training process is reused: the model is rebuilt by `peftlab.reload.load_run`. The batches are the length-sorted
evaluation batches training used, at the run's own `trainer.eval_batch_size`, so on the split
training scored the numbers are bit-identical to its metrics.json; the file records both,
`matches_training` says whether they are equal, and `largest_difference` by how much they are not.
PiSSA and OLoRA save a conversion of their weights (a LoRA of the original base), so their reload
rounds differently: `reload_note` says so, where any other difference is a bug.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError, PeftlabError
from peftlab.outputs import atomic_write, json_text, make_output_folder, predictions_file_name, write_predictions
from peftlab.record import RunRecord, same_scores, score_text
from peftlab.tasks.base import SPLITS

USAGE = "usage: python -m peftlab.evaluate RUN_FOLDER [split=validation] [out=DIR]"
OPTIONS = {"split": "validation", "out": None}


def eval_file_name(split: str) -> str:
    return f"eval_{split}.json"


def parse_args(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        raise ConfigError(f"no run folder given; {USAGE}")
    options = dict(OPTIONS)
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise ConfigError(f"{arg}: unknown argument; allowed: {', '.join(f'{k}=' for k in OPTIONS)} ({USAGE})")
        options[key] = value
    if options["split"] not in SPLITS:
        raise ConfigError(f"split={options['split']} is not a split; allowed: {', '.join(SPLITS)}")
    return Path(argv[0]), options


def evaluate_run(run_dir: Path, split: str, predictions_dir: Optional[Path] = None) -> dict[str, Any]:
    """Scores of the run's saved weights on `split`, with what training recorded for comparison; a
    generation task's answers go to predictions_dir/predictions_<split>.jsonl when it is given."""
    from peftlab.reload import load_run, load_run_config

    cfg = load_run_config(run_dir)  # a folder that is not a finished run fails before torch loads
    import torch
    from torch.utils.data import DataLoader

    from peftlab.data import eval_batches
    from peftlab.methods import METHODS
    from peftlab.models import load_tokenizer
    from peftlab.scoring import Scorer, precision_plugin

    cfg, task, model = load_run(run_dir, cfg)
    tokenizer = load_tokenizer(cfg.model)
    raw = task.examples(split)
    examples = task.encode(raw, tokenizer)
    batches = eval_batches([len(e["input_ids"]) for e in examples], cfg.trainer.eval_batch_size)
    loader = DataLoader(examples, batch_sampler=batches, collate_fn=task.collator(tokenizer))

    method = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft)
    scorer = Scorer(task, method)
    precision = precision_plugin(cfg.trainer.precision)  # cast and autocast as training's validation did
    model = precision.convert_module(model)
    with torch.inference_mode(), precision.forward_context():
        for batch in loader:
            scorer.update(model, precision.convert_input(batch))
    scores = scorer.compute()
    predictions = scorer.predictions()
    if predictions is not None and predictions_dir is not None:
        write_predictions(predictions_dir, split, predictions)

    recorded = RunRecord.read(run_dir)
    trained = recorded.eval.values
    training_scores = {k: trained[k] for k in scores if k in trained} if recorded.eval.split == split else None
    return {
        "run": str(run_dir),
        "model": recorded.model.name,
        "method": recorded.method.label,
        "task": recorded.task,
        "seed": recorded.seed,
        "split": split,
        "n": len(raw),
        "batch_size": cfg.trainer.eval_batch_size,
        "scores": scores,
        "data": split_fingerprint(task.split_file(split)),
        "training_scores": training_scores,
        "matches_training": None if training_scores is None else same_scores(training_scores, scores),
        "largest_difference": None if training_scores is None else largest_difference(training_scores, scores),
        "reload_note": method.reload_note(),  # why the reload may not be bit-identical (PiSSA), or None
        "predictions": predictions_file_name(split) if predictions is not None and predictions_dir is not None else None,
    }


def largest_difference(trained: dict[str, float], scored: dict[str, float]) -> float:
    """The largest relative difference between training's scores and these (0.0: bit-identical)."""
    gaps = [_gap(trained[k], v) for k, v in scored.items() if k in trained and not same_scores({k: trained[k]}, {k: v})]
    return max(gaps, default=0.0)


def _gap(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.inf  # undefined on one side only
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def split_fingerprint(path: Optional[Path]) -> dict[str, Optional[str]]:
    """The split's file and its md5, which is the hash DVC 3 records for it in data.dvc's listing."""
    if path is None or not path.is_file():
        return {"file": None if path is None else str(path), "md5": None}
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": str(path), "md5": digest.hexdigest()}


def main(argv: Optional[list[str]] = None) -> None:
    from peftlab.cli import fail

    try:
        run_dir, options = parse_args(sys.argv[1:] if argv is None else argv)
        out_dir = make_output_folder(Path(options["out"]), "out") if options["out"] else run_dir
        result = evaluate_run(run_dir, options["split"], out_dir)
    except PeftlabError as err:
        fail(err)
    atomic_write(out_dir / eval_file_name(options["split"]), json_text(result))
    scores = ", ".join(f"{k} {score_text(v)}" for k, v in result["scores"].items())
    print(f"{run_dir} on {options['split']} (n={result['n']}): {scores} ({comparison(result)})")


def comparison(result: dict[str, Any]) -> str:
    if result["matches_training"] is None:
        return "not scored in training"
    if result["matches_training"]:
        return "equal to training's"
    gap = f"largest relative difference {result['largest_difference']:.1e}"
    if result["reload_note"]:
        return f"not bit-identical to training's, {gap}: {result['reload_note']}"
    return f"DIFFERENT from training's, {gap}"

if __name__ == "__main__":
    main()
