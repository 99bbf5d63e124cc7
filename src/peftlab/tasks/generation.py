"""Text generation on decoder LLMs and encoder-decoders: instruction tuning, summarisation, translation.

A record (a dict of text fields) becomes a prompt and a target through the task's templates
(`task.prompt: "Translate: {en}"`, `task.target: "{de}"`, Python format strings over the fields).
With `task.chat_template=true` the prompt is the user turn of the tokenizer's chat template, when
the tokenizer has one. Training learns the target tokens only:

- decoder (LLaMA, Qwen2, GPT-2): one sequence, prompt + target + EOS; the labels are -100 over the
  prompt, so the loss covers the target (and its EOS) alone. `task.packing=true` packs several
  training examples into each row of task.max_length tokens, position ids restarting at 0 for
  each, so attention stays inside each example (transformers builds the block-diagonal causal mask
  from the position ids when no attention mask is given, the way its flattening collator does).
- encoder-decoder (T5): the prompt is the encoder's input and the target the decoder's labels.

Evaluation scores every example's loss (so perplexity = exp of the mean loss per target token)
and generates, greedily, for the first `task.generate_samples` examples of the split, from their
prompt alone, left-padded in batches; the task's metric (ROUGE, BLEU, chrF) scores those answers
against every reference, and each is written to the run folder's predictions_<split>.jsonl.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from peftlab.errors import ConfigError, DataError, require
from peftlab.tasks.base import MetricInfo, Task, TaskConfig

IGNORE = -100  # label of a token the loss skips (transformers' convention)
SCORING_KEYS = ("example_id", "prompt_ids", "prompt_mask", "num_examples", "num_tokens")
PERPLEXITY = MetricInfo("perplexity", higher_is_better=False, percent=False)


@dataclass
class GenerationConfig(TaskConfig):
    prompt: str = MISSING  # what the model reads: a format string over a record's fields ("{instruction}")
    target: str = MISSING  # what it learns to write, e.g. "{output}"
    prompt_no_input: Optional[str] = None  # the prompt for records whose `input_field` is empty (Alpaca's second template)
    input_field: str = "input"
    chat_template: bool = False  # the prompt as the user turn of the tokenizer's chat template, if it has one
    packing: bool = False  # several training examples per row of max_length tokens (decoders only)
    generate_samples: int = 64  # evaluation examples (the first N) generated and scored by the task's metric
    max_new_tokens: int = 128  # the longest generated answer
    max_length: int = 512  # tokens of prompt + target (decoders), or of each (encoder-decoders)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("prompt", "target", "prompt_no_input"):
            template = getattr(self, key)
            if template is not None:
                template_fields(template, f"task.{key}")
        require(template_fields(self.target, "task.target"), "task.target", self.target, "it must name at least one field, e.g. {output}")
        require(self.generate_samples >= 0, "task.generate_samples", self.generate_samples, "it must be >= 0")
        require(self.max_new_tokens >= 1, "task.max_new_tokens", self.max_new_tokens, "it must be >= 1")


def template_fields(template: str, key: str) -> list[str]:
    """The field names a format string uses; ConfigError for one Python cannot parse."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ConfigError(f"{key}={template!r} is not a format string ({err}); name fields as {{field}}, write {{{{ for a brace") from None
    bad = [name for name in names if not name.isidentifier()]
    if bad:
        raise ConfigError(f"{key}={template!r}: {{{bad[0]}}} is not a field name; allowed: {{field}} with a record's field name")
    return names


class GenerationTask(Task):
    """Subclasses implement `read(split)` returning records: {field: text, ...} dicts, with an
    optional "references" list (every reference answer; default: the rendered target)."""

    config_class = GenerationConfig
    main_metric = "perplexity"
    metric_info: tuple[MetricInfo, ...] = (PERPLEXITY,)

    @classmethod
    def check_config(cls, cfg):
        if cfg.generate_samples < 1 and any(m.name != "perplexity" for m in cls.metric_info):
            raise ConfigError(
                f"task.generate_samples=0, but task {cfg.name} scores {cls.main_metric} on generated answers; allowed: >= 1"
            )

    def __init__(self, cfg: GenerationConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.family: Optional[str] = None  # set by for_model, before encoding
        self.tokenizer = None
        self.references: list[dict[str, Any]] = []  # {"prompt", "references"} of every generated example, by example_id

    # -- the model -----------------------------------------------------------------------------
    def for_model(self, family, model_type):
        if family == "encoder":
            raise ConfigError(
                f"task {self.cfg.name} generates text, which an encoder-only model ({model_type}) cannot; "
                "allowed: a decoder (llama, qwen2, gpt2: model=smollm2, model=tiny-llama) or an encoder-decoder (t5: model=tiny-t5)"
            )
        if family == "encoder-decoder" and not self.cfg.prompt:
            raise ConfigError(
                f"task {self.cfg.name} has no prompt (task.prompt is empty: language modelling), and this {model_type} "
                "encoder-decoder needs a source text to encode; allowed: a decoder (model=smollm2, model=tiny-llama)"
            )
        if self.cfg.packing and family != "decoder":
            raise ConfigError(f"task.packing=true packs decoder sequences; this {model_type} model is an {family}; allowed: task.packing=false")
        self.family = family

    def auto_model_class_for(self, family):
        return "AutoModelForCausalLM" if family == "decoder" else "AutoModelForSeq2SeqLM"

    def positions_needed(self) -> int:
        # A decoder generates after the prompt, in the same positions.
        extra = self.cfg.max_new_tokens if self.family == "decoder" and self.cfg.generate_samples else 0
        return self.cfg.max_length + extra

    # -- records -> prompt and target text -----------------------------------------------------
    def render(self, record: dict[str, Any], where: str) -> tuple[str, str]:
        template = self.cfg.prompt
        if self.cfg.prompt_no_input is not None and not str(record.get(self.cfg.input_field) or "").strip():
            template = self.cfg.prompt_no_input
        prompt = self._fill(template, record, "task.prompt" if template is self.cfg.prompt else "task.prompt_no_input", where)
        target = self._fill(self.cfg.target, record, "task.target", where)
        if not target.strip():
            raise DataError(f"task {self.cfg.name}: {where} has an empty target (task.target={self.cfg.target!r} renders to {target!r}); every example needs text to learn")
        return prompt, target

    def _fill(self, template: str, record: dict[str, Any], key: str, where: str) -> str:
        try:
            # A JSON null is an empty field, not the text "None".
            return template.format_map({k: "" if v is None else v for k, v in record.items() if k != "references"})
        except KeyError as err:
            fields = ", ".join(k for k in record if k != "references")
            raise DataError(f"{key} names field {err.args[0]!r}, which {where} lacks; its fields: {fields}") from None

    def prompt_text(self, prompt: str) -> str:
        """The prompt as the model reads it: the user turn of the chat template, when asked and there is one."""
        if self.cfg.chat_template and self.has_chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # -- encoding ------------------------------------------------------------------------------
    def examples(self, split):
        rows = super().examples(split)
        where = f"{split} example"
        for n, row in enumerate(rows, start=1):
            self.render(row, f"{where} {n}")  # a missing field or an empty target fails before tokenizing
        return rows

    def encode(self, examples, tokenizer):
        """Evaluation examples; the first generate_samples of them are generated for."""
        encoded = self._encode(examples, tokenizer)
        for n, (example, row) in enumerate(zip(encoded, examples)):
            if n < self.cfg.generate_samples:
                prompt, target = self.render(row, f"example {n + 1}")
                example["example_id"] = len(self.references)
                self.references.append({"prompt": prompt, "references": [str(r).strip() for r in row.get("references") or [target]]})
        return encoded

    def encode_train(self, examples, tokenizer):
        encoded = self._encode(examples, tokenizer)
        for example in encoded:
            del example["prompt_ids"]  # only generation reads it
        return pack(encoded, self.cfg.max_length) if self.cfg.packing else encoded

    def _encode(self, examples, tokenizer) -> list[dict[str, Any]]:
        self.tokenizer = tokenizer
        if self.family is None:
            raise RuntimeError("GenerationTask.for_model must be called before encoding")  # a wiring error, not the user's
        pairs = [self.render(row, f"example {n}") for n, row in enumerate(examples, start=1)]
        prompts = tokenizer([self.prompt_text(p) for p, _ in pairs], add_special_tokens=not self._templated)["input_ids"]
        targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        if self.family == "decoder":
            self._check_room(prompts, examples)
        encoded = []
        for prompt, target in zip(prompts, targets):
            target = target + [eos]
            if self.family == "decoder":
                ids = (prompt + target)[: self.cfg.max_length]
                labels = ([IGNORE] * len(prompt) + target)[: self.cfg.max_length]
                encoded.append({"input_ids": ids, "labels": labels, "prompt_ids": prompt})
            else:  # encoder-decoder: the prompt is the encoder's input, cut to max_length like the target
                encoded.append({"input_ids": prompt[: self.cfg.max_length], "labels": target[: self.cfg.max_length],
                                "prompt_ids": prompt[: self.cfg.max_length]})  # fmt: skip
        return encoded

    @property
    def _templated(self) -> bool:
        """A chat template writes its own special tokens (BOS and the turn markers)."""
        return self.cfg.chat_template and self.has_chat_template

    def _check_room(self, prompts: list[list[int]], examples) -> None:
        """A decoder's prompt must leave room for at least one target token."""
        full = [n for n, ids in enumerate(prompts) if len(ids) >= self.cfg.max_length]
        if full:
            first = full[0]
            raise DataError(
                f"task {self.cfg.name}: {len(full)} of {len(prompts)} prompts leave no room for the target within "
                f"task.max_length={self.cfg.max_length} (the first, example {first + 1}, is {len(prompts[first])} tokens); "
                "raise task.max_length or shorten the prompt template"
            )

    def collator(self, tokenizer):
        return GenerationCollator(tokenizer.pad_token_id)

    def model_inputs(self, batch):
        # No KV cache in a training or scoring pass: it would cost memory, and transformers only
        # reads packed rows' position ids when there is none.
        return {**{k: v for k, v in batch.items() if k not in SCORING_KEYS}, "use_cache": False}

    def loss_weight(self, batch) -> int:
        return int(target_tokens(batch["labels"], self.family))

    def batch_examples(self, batch):
        return batch["num_examples"]  # a tensor, read at the end of training

    def batch_tokens(self, batch):
        return batch["num_tokens"]

    # -- scoring -------------------------------------------------------------------------------
    def metrics(self):
        from torchmetrics import MetricCollection

        from peftlab.metrics.text import GenerationScores

        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
        return MetricCollection({"text": GenerationScores(self.references, decode, self.text_scores)})

    def metric_inputs(self, outputs, batch, model):
        import torch

        generated = []
        if "prompt_ids" in batch:  # the batch holds examples to generate for
            generated = self.generate(model, batch["prompt_ids"], batch["prompt_mask"])
        example_id = batch.get("example_id", torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device))
        return outputs.loss, target_tokens(batch["labels"], self.family), example_id, generated

    def generate(self, model, prompt_ids, prompt_mask) -> list:
        """Greedy answers to left-padded prompts: the new tokens of each, up to its first EOS."""
        tokenizer = self.tokenizer
        output = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        new = output[:, prompt_ids.shape[1] :] if self.family == "decoder" else output[:, 1:]  # T5 starts with its start token
        answers = []
        for row in new:
            ends = (row == tokenizer.eos_token_id).nonzero()
            answers.append(row[: int(ends[0])] if len(ends) else row)
        return answers

    def text_scores(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        """The task's scores of generated answers against each example's references (none: perplexity only)."""
        return {}

    def predictions(self, metrics):
        return metrics["text"].last_predictions



def target_tokens(labels, family: Optional[str]):
    """The tokens a batch's loss is the mean over: a decoder predicts token t from those before it,
    so its first label is never predicted."""
    scored = labels[:, 1:] if family == "decoder" else labels
    return (scored != IGNORE).sum()


def pack(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Greedy packing, in order, of whole examples into rows of at most max_length tokens. Each
    row holds its examples' ids and labels end to end, the position ids restart at 0 for each,
    and the first label of each is -100 (it would be predicted from the example before it)."""
    rows, current = [], None
    for example in examples:
        n = len(example["input_ids"])
        if current is None or len(current["input_ids"]) + n > max_length:
            current = {"input_ids": [], "labels": [], "position_ids": [], "num_examples": 0}
            rows.append(current)
        current["input_ids"] += example["input_ids"]
        current["labels"] += [IGNORE] + example["labels"][1:]
        current["position_ids"] += list(range(n))
        current["num_examples"] += 1
    return rows


class GenerationCollator:
    """Right-pads ids and labels for the loss; left-pads the prompts of the examples generated for
    (a decoder continues from the last position). A class, so dataloader workers can pickle it."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, features: list[dict[str, Any]]):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        label_width = max(len(f["labels"]) for f in features)  # an encoder-decoder's labels are the decoder's, of their own length
        ids = functools.partial(torch.tensor, dtype=torch.long)  # also for an empty prompt (no tokens to infer a type from)
        batch = {
            "input_ids": ids([f["input_ids"] + [self.pad] * (width - len(f["input_ids"])) for f in features]),
            "labels": ids([f["labels"] + [IGNORE] * (label_width - len(f["labels"])) for f in features]),
            "num_examples": torch.tensor(sum(f.get("num_examples", 1) for f in features)),
            "num_tokens": torch.tensor(sum(len(f["input_ids"]) for f in features)),
        }
        if "position_ids" in features[0]:  # packed rows: no attention mask, so the position ids delimit examples
            # Padding gets its own positions from 0, so it is a separate (ignored) example.
            batch["position_ids"] = torch.tensor([f["position_ids"] + list(range(width - len(f["position_ids"]))) for f in features])
        else:
            batch["attention_mask"] = ids([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        generated = [f for f in features if "example_id" in f]
        if generated:
            prompt_width = max(len(f["prompt_ids"]) for f in generated)
            batch["example_id"] = torch.tensor([f["example_id"] for f in generated])
            batch["prompt_ids"] = torch.tensor([[self.pad] * (prompt_width - len(f["prompt_ids"])) + f["prompt_ids"] for f in generated])
            batch["prompt_mask"] = torch.tensor([[0] * (prompt_width - len(f["prompt_ids"])) + [1] * len(f["prompt_ids"]) for f in generated])
        return batch
