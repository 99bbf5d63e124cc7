"""Extractive QA (SQuAD v1.1): the real splits, windows and offsets, spans back to text, the metric
against hand-computed EM/F1, bad SQuAD files, and a tiny full fine-tuning run."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import DATA, assert_one_line_error, compose, one_line_failure, run_cli, train_tiny

from peftlab.config import validate
from peftlab.errors import ConfigError, DataError
from peftlab.evaluate import evaluate_run
from peftlab.tasks import TASKS

# 30 one-token words "a", then "dog sat" (context tokens 30 and 31), then 10 more: 42 context tokens
LONG_CONTEXT = " ".join(["a"] * 30 + ["dog", "sat"] + ["a"] * 10)
LONG_ROW = {"id": "q1", "question": "what sat?", "context": LONG_CONTEXT,
            "answers": {"text": ["dog sat"], "answer_start": [LONG_CONTEXT.index("dog")]}}  # fmt: skip


@pytest.fixture(scope="session")
def squad_available() -> None:
    if not (DATA / "squad" / "dev-v1.1.json").is_file():
        pytest.fail("data/ is empty: run `dvc pull` (scripts/setup.sh does) before the tests")


@pytest.fixture(scope="module")
def tokenizer():
    from peftlab.models import load_tokenizer

    return load_tokenizer(validate(compose("model=tiny-bert", f"data_dir={DATA}")).model)


def task_for(name: str, *overrides: str):
    cfg = validate(compose(f"task={name}", f"data_dir={DATA}", "model=tiny-bert", *overrides))
    return TASKS.get(cfg.task.task, "task")(cfg.task, seed=cfg.seed)


def test_real_splits_have_the_official_question_counts(squad_available):
    task = task_for("squad")
    assert (len(task.examples("train")), len(task.examples("validation"))) == (87_599, 10_570)
    first = task.examples("validation")[0]
    assert first["id"] == "56be4db0acb8001400a502ec" and first["answers"]["text"] == ["Denver Broncos"] * 3
    assert first["context"][177 : 177 + len("Denver Broncos")] == "Denver Broncos"
    with pytest.raises(DataError, match=r"task squad has no labelled test split \(SQuAD's test set is not public\)"):
        task.examples("test")


def test_a_long_context_is_split_into_overlapping_windows(tokenizer):
    # 32 tokens a window: [CLS] what sat ? [SEP] + 26 context tokens + [SEP]; neighbours share 8
    task = task_for("squad", "task.max_length=32", "task.doc_stride=8")
    first, second = task.encode([LONG_ROW], tokenizer)
    assert len(first["input_ids"]) == 32
    # window 1 holds context tokens 0-25: no answer, so both positions point at [CLS]
    assert (first["start_positions"], first["end_positions"]) == (0, 0)
    # window 2 starts 8 back, at context token 18: "dog sat" (30, 31) are its tokens 5 + 12 and 5 + 13
    assert (second["start_positions"], second["end_positions"]) == (17, 18)
    assert tokenizer.convert_ids_to_tokens(second["input_ids"][17:19].tolist()) == ["dog", "sat"]
    assert first["offsets"][-9:-1].tolist() == second["offsets"][5:13].tolist()  # the shared 8 tokens, before [SEP]
    assert second["offsets"][5].tolist() == [36, 37]  # context token 18 is characters 36-37
    for window in (first, second):  # [CLS], the question, both [SEP]s are outside the context
        assert window["offsets"][:5].tolist() == [[-1, -1]] * 5 and window["offsets"][-1].tolist() == [-1, -1]
    assert first["example_id"] == second["example_id"] == 0
    # ids keep counting across encode calls, so each split's windows point at their own questions
    assert [f["example_id"] for f in task.encode([LONG_ROW], tokenizer)] == [1, 1]
    assert task.encoded_examples == [LONG_ROW, LONG_ROW]


def test_the_best_span_maps_back_to_text_through_the_offsets(tokenizer):
    from peftlab.metrics.span import best_spans

    task = task_for("squad", "task.max_length=32", "task.doc_stride=8")
    batch = task.collator(tokenizer)(task.encode([LONG_ROW], tokenizer)[::-1])  # 32 and 30 tokens
    assert batch["offsets"].shape == (2, 32, 2) and batch["offsets"][0, 30:].tolist() == [[-1, -1]] * 2  # padding
    assert set(task.model_inputs(batch)) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    start, end = torch.zeros(2, 32), torch.zeros(2, 32)
    start[0, 17] = end[0, 18] = 5.0  # "dog sat"
    start[0, 0] = end[0, 0] = 20.0  # [CLS] is outside the context: never an answer
    end[0, 10] = 9.0  # before the start: spans (i <= 10, 10) score only 9
    score, first_char, last_char = best_spans(start, end, batch["offsets"], max_answer_length=30)
    assert score[0] == 10.0 and LONG_CONTEXT[first_char[0] : last_char[0]] == "dog sat"
    # at most one token: the best span is now (10, 10), 0 + 9: context token 18 + 5, characters 46-47
    score, first_char, last_char = best_spans(start, end, batch["offsets"], max_answer_length=1)
    assert score[0] == 9.0 and (first_char[0], last_char[0]) == (46, 47)


# -- the metric, by hand -------------------------------------------------------------------------
PARIS = "Paris is home to the Eiffel Tower, built in 1889."
SKY = "Above the bay was a clear blue sky that day."
HAND_EXAMPLES = [
    {"id": "paris", "context": PARIS, "answers": {"text": ["the eiffel tower", "Tower"], "answer_start": [17, 28]}},
    {"id": "sky", "context": SKY, "answers": {"text": ["blue sky", "a clear blue sky"], "answer_start": [26, 18]}},
]


def window(context: str, first_word: int, last_word: int, logit: float, width: int = 12):
    """One window over the words of `context` ([CLS], then one token a word, -1-padded to `width`), whose
    logits pick words first_word..last_word with score 2 * logit."""
    offsets = [(-1, -1)] + [m.span() for m in re.finditer(r"\S+", context)]
    offsets += [(-1, -1)] * (width - len(offsets))
    start, end = torch.zeros(width), torch.zeros(width)
    start[1 + first_word], end[1 + last_word] = logit, logit
    return start, end, torch.tensor(offsets)


def update(metric, example_ids: list[int], *windows) -> None:
    start, end, offsets = (torch.stack(parts) for parts in zip(*windows))
    metric.update(start, end, offsets, torch.tensor(example_ids))


def test_squad_scores_by_hand():
    from peftlab.metrics.span import SquadScores

    metric = SquadScores(HAND_EXAMPLES, max_answer_length=30)
    # sky: "clear blue sky that day." -> clear blue sky that day (5 tokens). Against "blue sky": 2 common,
    # P 2/5, R 1, F1 4/7; against "a clear blue sky" -> clear blue sky: 3 common, P 3/5, R 1, F1 3/4. EM 0.
    # paris, a weaker window first: "Paris"
    update(metric, [1, 0], window(SKY, 5, 9, 3.0), window(PARIS, 0, 0, 1.0))
    # paris, its best window last: "Eiffel Tower," -> eiffel tower = "the eiffel tower" normalised
    # (case, article, punctuation): EM 1, F1 1.
    update(metric, [0], window(PARIS, 5, 6, 2.0))
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == pytest.approx({"exact_match": 1 / 2, "f1": (1 + 3 / 4) / 2})


def test_squad_scores_join_a_question_s_windows_across_ddp_ranks():
    from peftlab.metrics.span import STATES, SquadScores

    # rank 1 saw paris's best window, rank 0 a weaker one: gathered, the best one must win
    rank1 = SquadScores(HAND_EXAMPLES, max_answer_length=30)
    update(rank1, [0], window(PARIS, 5, 6, 2.0))
    theirs = iter([torch.cat(getattr(rank1, state)) for state in STATES])  # add_state order
    rank0 = SquadScores(HAND_EXAMPLES, max_answer_length=30, dist_sync_fn=lambda mine, group=None: [mine, next(theirs)],
                        distributed_available_fn=lambda: True)  # fmt: skip
    update(rank0, [0], window(PARIS, 0, 0, 1.0))
    assert {k: float(v) for k, v in rank0.compute().items()} == pytest.approx({"exact_match": 1.0, "f1": 1.0})


# -- bad input -----------------------------------------------------------------------------------
def squad_json(answer_start: int) -> dict:
    qa = {"id": "q-bad", "question": "Where is the tower?", "answers": [{"text": "Paris", "answer_start": answer_start}]}
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": PARIS, "qas": [qa]}]}]}


def files_task(tmp_path, train: object):
    (tmp_path / "train.json").write_text(json.dumps(train), encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps(squad_json(0)), encoding="utf-8")
    return task_for("squad_files", f"task.train_file={tmp_path / 'train.json'}", f"task.validation_file={tmp_path / 'dev.json'}")


def test_squad_files_read_a_user_file_and_have_no_test_split_unless_given(tmp_path):
    task = files_task(tmp_path, squad_json(0))
    assert task.examples("train") == [{"id": "q-bad", "question": "Where is the tower?", "context": PARIS,
                                       "answers": {"text": ["Paris"], "answer_start": [0]}}]  # fmt: skip
    with pytest.raises(DataError, match=r"no labelled test split \(set task.test_file to score one\)"):
        task.examples("test")


def test_an_answer_not_at_its_answer_start_names_file_and_question(tmp_path):
    task = files_task(tmp_path, squad_json(5))
    with pytest.raises(DataError) as caught:
        task.examples("train")
    assert str(caught.value) == (f"{tmp_path / 'train.json'}: question q-bad: answer 'Paris' is not at answer_start 5 "
                                 "of its context, which reads ' is h' there")  # fmt: skip


@pytest.mark.parametrize("content,where", [
    ([1, 2], "the file has no list 'data'"),
    ({"data": [{"title": "t"}]}, "data[0] has no list 'paragraphs'"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q", "answers": [{"text": "c"}]}]}]}]},
     "an answer of question x has no int 'answer_start'"),
])  # fmt: skip
def test_a_file_that_is_not_squad_format_is_one_line(tmp_path, content, where):
    task = files_task(tmp_path, content)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'train.json'))} is not in SQuAD format: {re.escape(where)}; the layout is") as caught:
        task.examples("train")
    assert "\n" not in str(caught.value)


def test_a_question_that_leaves_no_room_for_the_overlap_is_one_line(tokenizer):
    # 16 tokens: "what sat?" (3) + 3 special tokens leave 10 for context, not more than doc_stride=10
    task = task_for("squad", "task.max_length=16", "task.doc_stride=10")
    with pytest.raises(DataError, match=r"^task squad: question q1 is 3 tokens, too long for task.max_length=16 with task.doc_stride=10 "):
        task.encode([LONG_ROW], tokenizer)
    # doc_stride=9 fits: each window moves on by one of the 42 context tokens, 1 + (42 - 10) windows
    assert len(task_for("squad", "task.max_length=16", "task.doc_stride=9").encode([LONG_ROW], tokenizer)) == 33


def test_doc_stride_must_be_below_max_length():
    with pytest.raises(ConfigError, match=r"^task.doc_stride=128 is out of range; it must be >= 0 and < task.max_length \(128\)"):
        task_for("squad", "task.max_length=128")


def test_bad_squad_input_is_one_line_on_the_command_line(tmp_path):
    result = run_cli("task=squad", "task.doc_stride=400", cwd=tmp_path)
    assert_one_line_error(result, "task.doc_stride=400 is out of range; it must be >= 0 and < task.max_length (384)")
    files_task(tmp_path, squad_json(5))
    line = one_line_failure(tmp_path / "run", "task=squad_files", "task.max_length=128", "task.doc_stride=32",
                            f"task.train_file={tmp_path / 'train.json'}", f"task.validation_file={tmp_path / 'dev.json'}")  # fmt: skip
    assert f"{tmp_path / 'train.json'}: question q-bad: answer 'Paris' is not at answer_start 5" in line


# -- a tiny run ----------------------------------------------------------------------------------
def test_a_tiny_full_run_scores_f1_and_exact_match_and_reloads_bit_identically(tmp_path, squad_available):
    # tiny-bert has 128 positions (the YAML's 384 is for real models)
    run = train_tiny(tmp_path, "task=squad", "peft=full", "task.max_train_samples=32", "task.max_eval_samples=16",
                     "task.max_length=128", "task.doc_stride=32")  # fmt: skip
    assert run.metrics["main_metric"] == "f1"
    assert set(run.metrics["eval"]) == {"split", "n", "loss", "f1", "exact_match"}
    assert run.metrics["eval"]["n"] == 16  # questions, though SQuAD paragraphs make more 128-token windows
    assert all(0 <= run.metrics["eval"][k] <= 1 for k in ("f1", "exact_match"))
    assert run.metrics["metric_info"]["exact_match"] == {"higher_is_better": True, "percent": True}
    assert run.model.qa_outputs.out_features == 2  # start and end logits
    assert run.metrics["params"]["trainable"] == run.metrics["params"]["total"]  # full: the span head trains too
    assert evaluate_run(tmp_path, "validation")["matches_training"] is True
