"""`python -m peftlab.export RUN --merge`: a plain transformers folder that loads without peftlab or
peft and predicts as the run does (fp32 logits within 1e-6); methods that cannot merge are refused
in one line that says how to load their adapter."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_command, train_tiny

from peftlab.errors import ConfigError
from peftlab.export import export_run

BATCH = {"input_ids": torch.tensor([[101, 2023, 3185, 2001, 2307, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
TOLERANCE = 1e-6  # merging reorders float32 sums: W x + B (A x) becomes (W + B A) x

# Loads exports with only the standard library and site-packages minus peft and peftlab; one process
# for all of them (its imports of torch and transformers take ~10 s here).
LOADER = """
import json, sys, torch, transformers
for name in ("peft", "peftlab"):
    try:
        __import__(name)
        raise SystemExit(f"{name} is importable")
    except ImportError:
        pass
out = []
for folder, auto_class, ids in json.loads(sys.argv[1]):
    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    ids = torch.tensor(ids)
    with torch.no_grad():
        out.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.tolist())
print(json.dumps(out))
"""


def without_peft(tmp: Path) -> dict[str, str]:
    """PYTHONPATH of a folder that links every site-packages entry except peft's and peftlab's; with
    `python -S` (no .pth files, so not the editable install) that is all the process sees."""
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp / "site"
    view.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("peft", "__editable__", "_peftlab")) and entry.suffix != ".pth":
            (view / entry.name).symlink_to(entry)
    return {**os.environ, "PYTHONPATH": str(view)}


def logits_elsewhere(tmp: Path, exports: list) -> list[torch.Tensor]:
    done = subprocess.run([sys.executable, "-S", "-c", LOADER, json.dumps(exports)],
                          capture_output=True, text=True, timeout=300, env=without_peft(tmp), cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.tensor(t) for t in json.loads(done.stdout.strip().splitlines()[-1])]


EXPORTS = {  # an encoder's classifier and a decoder's language model
    "bert": (["peft=lora", "rank=4"], "AutoModelForSequenceClassification", [[101, 2023, 3185, 2001, 2307, 102]]),
    "llama": (["peft=lora", "rank=4", "model=tiny-llama", "task=multi30k", "task.max_train_samples=16", "task.max_eval_samples=8",
               "task.generate_samples=2", "task.max_new_tokens=2"], "AutoModelForCausalLM", [[1, 504, 3714, 314, 2]]),
}  # fmt: skip


def test_merged_export_loads_without_peftlab_or_peft_and_predicts_as_the_run(tmp_path):
    exports, expected = [], []
    for name, (overrides, auto_class, ids) in EXPORTS.items():
        run = train_tiny(tmp_path / name, *overrides, "trainer.max_steps=4")
        out = export_run(tmp_path / name, merge=True)
        assert out == tmp_path / name / "export-merged"
        assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
        exports.append((str(out), auto_class, ids))
        with torch.no_grad():
            mask = torch.ones(len(ids), len(ids[0]), dtype=torch.long)
            expected.append(run.model.eval()(input_ids=torch.tensor(ids), attention_mask=mask).logits)
    for got, want in zip(logits_elsewhere(tmp_path, exports), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE)


# LoRA and DoRA: merged by the same peft call. DeBERTa's head has a ContextPooler, a trained copy
# with no weight of its own, which peft's IA3 / LoHa / LoKr / VeRA unload could not put back.
@pytest.mark.parametrize(("method", "model"), [("ia3", "tiny-bert"), ("bitfit", "tiny-bert"), ("pissa", "tiny-bert"),
                                               ("full", "tiny-bert"), ("ia3", "tiny-deberta"), ("vera", "tiny-deberta")])  # fmt: skip
def test_every_mergeable_method_folds_into_the_weights(tmp_path, method, model):
    from transformers import AutoModelForSequenceClassification

    run = train_tiny(tmp_path / "run", f"peft={method}", f"model={model}", "trainer.max_steps=4")
    latency = run.record.latency  # the record times inference with the method's modules and merged
    assert (latency.examples, latency.batch_size, latency.device) == (4, 1, "cpu")
    assert latency.unmerged_ms > 0 and latency.merged_ms > 0
    out = export_run(tmp_path / "run", merge=True, out=tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())  # a plain BERT
    with torch.no_grad():
        torch.testing.assert_close(merged(**BATCH).logits, run.model.eval()(**BATCH).logits, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("examples", [1, 2, 5])
def test_latency_warms_up_on_at_most_two_requests_and_times_each_one(examples):
    """A validation split of one example (a user's own file) is still timed: warmed up once, then timed."""
    from peftlab.latency import median_ms

    calls = []
    requests = [{"input_ids": torch.full((1, 3), n)} for n in range(examples)]
    ms = median_ms(lambda **inputs: calls.append(int(inputs["input_ids"][0, 0])), requests, torch.device("cpu"), contextlib.nullcontext)
    assert calls == [*range(min(examples, 2)), *range(examples)] and ms >= 0


def test_latency_that_cannot_be_measured_is_none_with_a_warning_not_a_lost_run():
    from types import SimpleNamespace

    from peftlab.latency import measure

    class Refuses(torch.nn.Linear):
        config = SimpleNamespace(is_encoder_decoder=False)

        def forward(self, **inputs):
            raise RuntimeError("no kernel for this shape")

    model, task = Refuses(2, 2), SimpleNamespace(model_inputs=lambda batch: batch)
    with pytest.warns(UserWarning, match="latency: not measured, the batch-1 forward pass failed: RuntimeError: no kernel"):
        latency = measure(model, None, task, [{"input_ids": torch.ones(1, 3)}], lambda rows: rows[0], 4,
                          SimpleNamespace(forward_context=contextlib.nullcontext))  # fmt: skip
    assert latency is None and model.training  # left as it was


@pytest.mark.parametrize(("overrides", "message"), [
    (["peft=adapter", "rank=4"], "--merge: peft=adapter-houlsby inserts bottleneck layers that no transformers architecture has, so it cannot be merged; export without --merge"),
    (["peft=prompt_tuning", "task.max_length=64"], r"--merge: peft=prompt_tuning prepends virtual tokens, which no weight of the model can hold; export without --merge and load the adapter with peft: PeftModel.from_pretrained"),
])  # fmt: skip
def test_methods_that_cannot_merge_are_refused_and_nothing_is_written(tmp_path, overrides, message):
    run = train_tiny(tmp_path / "run", *overrides, "trainer.max_steps=2")
    assert run.record.latency.unmerged_ms > 0 and run.record.latency.merged_ms is None  # nothing to merge: not timed
    with pytest.raises(ConfigError, match=message):
        export_run(tmp_path / "run", merge=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "export" in p.name) == []


def test_unmerged_export_is_a_peft_adapter_and_its_tokenizer(tmp_path):
    from peft import PeftModel

    from peftlab.reload import load_run

    run = train_tiny(tmp_path / "run", "peft=lora", "rank=4", "trainer.max_steps=2")
    out = export_run(tmp_path / "run", merge=False)
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "tokenizer"]
    assert (out / "adapter" / "adapter_config.json").is_file()
    _, _, reloaded = load_run(tmp_path / "run")
    base = reloaded.unload()  # the same base, without the adapter
    with torch.no_grad():
        again = PeftModel.from_pretrained(base, str(out / "adapter")).eval()(**BATCH).logits
        assert torch.equal(again, run.model.eval()(**BATCH).logits)
    with pytest.raises(ConfigError, match=r"--out=.*export exists; allowed: a new folder"):
        export_run(tmp_path / "run", merge=False)
    with pytest.raises(ConfigError, match=r"^--out=/proc: no file can be created in this folder"):
        export_run(tmp_path / "run", merge=False, out=Path("/proc/export"))


def test_export_mistakes_are_one_line(tmp_path):
    assert_one_line_error(run_command(["-m", "peftlab.export", str(tmp_path / "nowhere"), "--merge"]), "nowhere: no such run folder")
    assert_one_line_error(run_command(["-m", "peftlab.export"]), "the following arguments are required: run")
