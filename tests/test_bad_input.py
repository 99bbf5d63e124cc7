"""Bad input, table-driven, across every config group and the four command lines.

Each row is a mistake a user can make. It must end as one line on stderr that starts with "error: "
and names what is wrong and what is allowed, exit code 2, no traceback, and no folder that looks
finished (no metrics.json). Add a row whenever a new mistake is caught.

Config rows fail while the config is composed, before torch loads (well under 3 s each). Rows that
need the data or the model run as real processes too, a few at once, since each spends ~10 s
importing torch, transformers and Lightning.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import DATA, ROOT, TINY, assert_one_line_error, run_cli, run_command, train_tiny

from peftlab.errors import PeftlabError
from peftlab.outputs import METRICS_FILE

# (overrides, what the error line says) -- caught before torch loads.
CONFIG_ROWS = [
    # top-level shortcuts
    ("rank=0", "rank=0 is out of range; it must be an integer >= 1"),
    ("rank=-4", "rank=-4 is out of range"),
    ("rank=abc", "rank: Value 'abc' of type 'str' could not be converted to Integer"),
    ("alpha=0", "alpha=0.0 is out of range; it must be > 0"),
    ("lr=-1", "lr=-1.0 is out of range; it must be > 0"),
    ("seed=-1", "seed=-1 is out of range; it must be in [0, 4294967295]"),
    ("seed=99999999999", "seed=99999999999 is out of range; it must be in [0, 4294967295]"),
    ("lr=inf", "lr=inf is out of range; it must be > 0 and finite"),
    ("rank=null", "rank=null is not allowed; give a value"),
    ("foo=1", "foo: unknown config key"),
    ("+foo=1", "foo: unknown config key; allowed: model, peft, task, trainer, logger, rank"),
    # the override grammar, Hydra's own keys and modes, multirun jobs
    ("rank", "rank: not an override Hydra can read (missing EQUAL at '<EOF>'); write key=value"),
    ("rank=[1,2", "rank=[1,2: not an override Hydra can read (no viable alternative at input '[1,2')"),
    ("hydra.nonexistent=1", "hydra.nonexistent: unknown config key; allowed: run, sweep"),
    ("-m rank=abc,4", "rank: Value 'abc' of type 'str' could not be converted to Integer"),
    ("-m rank=4,8 peft=lora,lorra", "peft=lorra is not an option"),
    ("-m --cfg job", "--multirun and --cfg cannot go together"),
    # budgets
    ("budget=fast", "budget=fast is not an option; allowed: cpu, none"),
    ("budget=cpu task=csv task.train_file=x.csv", "budget=cpu has no budget for task=csv (no conf/task_budget/cpu_csv.yaml); allowed: a task of alpaca, cola, conll2003, dialogsum"),
    # model
    ("model=gpt5", "model=gpt5 is not an option; allowed: flan-t5-base, gpt2, hub, llama-3.2-1b, minilm, qwen2.5-0.5b, smollm2"),
    ("model.name_or_path=./no/such/model", "model.name_or_path=./no/such/model: no such model folder"),
    ("model.tokenizer=./no/such/tokenizer", "model.tokenizer=./no/such/tokenizer: no such tokenizer folder (a hub id looks like org/name)"),
    ("+model.foo=1", "model.foo: unknown config key; allowed: name, name_or_path"),
    ("model=hub", "model.name_or_path: a value is required here"),
    # peft
    ("peft=lorra", "peft=lorra is not an option; allowed: adalora, adapter, bitfit, dora, full"),
    ("peft=", "peft= is not an option; allowed: adalora, adapter, bitfit, dora, full"),
    ("~peft", "peft: none chosen; allowed: peft=NAME with a NAME from conf/peft/"),
    ("peft=null", "Config group override must be a string or a list"),
    ("peft.rr=4", "peft.rr: unknown config key"),
    ("peft.dropout=1.5", "peft.dropout=1.5 is out of range; it must be in [0, 1)"),
    ("peft.r=0", "peft.r=0 is out of range; it must be an integer >= 1"),
    ("peft=adalora peft.target_modules=query", "peft.target_modules=query is not a target set; allowed: attention, all_linear"),
    ("peft.target_modules=[]", "peft.target_modules=[] is out of range; name a target set (attention, all_linear"),
    ("peft.target_modules=query", "peft.target_modules=query is not a target set; allowed: attention, all_linear, ffn, ffn_in, ia3, or a list of module names"),
    ("logger.tags=oops", "logger.tags: a list is expected here, e.g. logger.tags=[a,b]"),
    ("peft=adalora rank=8 peft.init_r=4", "peft.init_r=4 is out of range; it must be >= the target rank 8"),
    ("model=tiny-llama task=multi30k peft=prefix_tuning trainer.gradient_checkpointing=true",
     "peft=prefix_tuning cannot train with trainer.gradient_checkpointing=true: peft refuses it"),
    ("peft=adapter peft.variant=bogus", "peft.variant=bogus is not an option; allowed: houlsby, pfeiffer"),
    ("peft=adapter peft.reduction_factor=0", "peft.reduction_factor=0 is out of range; it must be >= 1"),
    # task
    ("task=glue9", "task=glue9 is not an option; allowed: alpaca, cola, "),
    ("task=csv", "task.train_file: a value is required"),
    ("task=csv task.train_file=a.txt task.validation_file=b.csv", "task.train_file=a.txt is out of range; allowed formats: .csv"),
    ("task.max_length=4", "task.max_length=4 is out of range; it must be >= 8"),
    ("task=instruction_files task.train_file=a.csv task.validation_file=b.jsonl", "task.train_file=a.csv is out of range; allowed formats: .json, .jsonl"),
    ("task=multi30k task.generate_samples=0", "task.generate_samples=0, but task multi30k scores bleu on generated answers; allowed: >= 1"),
    ("task=tinyshakespeare task.generate_samples=2", "task.generate_samples=2 is out of range; it must be 0: language modelling has no prompts"),
    ("task=multi30k task.max_new_tokens=0", "task.max_new_tokens=0 is out of range; it must be >= 1"),
    ("task=multi30k task.target='{de'", "task.target='{de' is not a format string"),
    ("task=dialogsum task.target='{summary.text}'", "task.target='{summary.text}': {summary.text} is not a field name"),
    ("task.max_train_samples=0", "task.max_train_samples=0 is out of range; it must be >= 1 or null"),
    ("task=csv task.train_file=a.csv task.validation_file=b.csv task.labels=[0,1,1]", "task.labels=['0', '1', '1'] is out of range; give at least 2 distinct labels"),
    ("task=csv task.train_file=a.csv task.validation_file=b.csv task.labels=[]", "task.labels=[] is out of range; give at least 2 distinct labels"),
    # trainer
    ("trainer=tpu", "trainer=tpu is not an option; allowed: cpu, ddp, deepspeed, deepspeed_zero3, fsdp, gpu"),
    ("trainer.precision=fp8", "trainer.precision=fp8 is not an option; allowed: 32-true, bf16-mixed"),
    ("trainer.devices=0", "trainer.devices=0 is out of range; allowed: an integer >= 1"),
    ("trainer.devices=many", "trainer.devices=many is out of range"),
    ("trainer.devices=[0]", "trainer.devices=[0] is out of range; a list of GPU indices needs trainer.accelerator=gpu"),
    ("trainer.gradient_clip_val=inf", "trainer.gradient_clip_val=inf is out of range; it must be > 0 and finite, or null"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is out of range; it must be >= 1"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5 is out of range"),
    ("trainer.warmup_ratio=1", "trainer.warmup_ratio=1.0 is out of range; it must be in [0, 1)"),
    ("+trainer.foo=1", "trainer.foo: unknown config key"),
    ("trainer.devices=64", "trainer.devices=64 is out of range; on CPU it is the number of processes, each a whole model; allowed: 1 to "),
    ("trainer.devices=-1", "trainer.devices=-1 is out of range; -1 (all GPUs) needs trainer.accelerator=gpu"),
    ("trainer.threads=999", "trainer.threads=999 is out of range; it must be in [1, "),
    ("peft=adalora peft.beta1=5", "peft.beta1=5.0 is out of range; it must be in [0, 1)"),
    ("peft=adalora peft.tinit=-3", "peft.tinit=-3 is out of range; it must be >= 0 steps"),
    ("task=csv task.train_file=a.csv task.validation_file=b.csv task.label_column=text", "task.label_column=text is out of range; it must not be one of task.text_columns"),
    # run folders named on the command line, and Hydra settings peftlab cannot run under
    ("hydra.run.dir=", "hydra.run.dir=. is the working directory; allowed: a folder of its own"),
    ("-m rank=4,8 hydra.sweep.dir=sw hydra.sweep.subdir=x", "jobs 0 and 1 would share the run folder sw/x"),
    ("hydra.run.dir=/proc/peftlab/run", "hydra.run.dir=/proc/peftlab/run cannot be created (No such file or directory)"),
    ("hydra.run.dir=/proc/sys", "hydra.run.dir=/proc/sys: no file can be created in this folder"),
    ("hydra.job.chdir=true", "hydra.job.chdir=true is not supported"),
    ("trainer=deepspeed", "trainer.strategy=deepspeed_stage_2 needs the deepspeed package, which is not installed: pip install deepspeed"),
    ("trainer=fsdp trainer.accelerator=cpu", "trainer.strategy=fsdp shards the model over CUDA GPUs, and Lightning runs it on nothing else"),
    ("resume=true", "resume=true: no interrupted run of this config with a checkpoint under runs/sst2/minilm/lora-r8-s42/"),
    ("hydra/launcher=joblib", "hydra/launcher=joblib is not an option here (a Hydra plugin that is not installed?)"),
    # logger
    ("logger=tensorboard", "logger=tensorboard is not an option; allowed: csv, wandb"),
    ("logger.mode=sometimes", "logger.mode=sometimes is not an option; allowed: offline, online, disabled"),
    ("logger.project=a/b", "logger.project=a/b is out of range; a W&B project name has none of / "),
    ("logger.tags=[" + "x" * 65 + "]", "is out of range; W&B tags have 1 to 64 characters"),
]


@pytest.mark.parametrize("overrides,message", CONFIG_ROWS, ids=[row[0] for row in CONFIG_ROWS])
def test_config_mistakes_are_one_line_fast_and_write_nothing(tmp_path, overrides, message):
    start = time.perf_counter()
    result = run_cli(*overrides.split(), cwd=tmp_path)
    elapsed = time.perf_counter() - start
    line = assert_one_line_error(result, message)
    assert result.stderr.strip() == line  # nothing else printed
    assert elapsed < 3.0, f"config error took {elapsed:.1f}s"
    assert not any(tmp_path.iterdir()), "a failed config must not leave a run folder"


# (id, overrides, what the error line says) -- caught once the data or the model is known.
# {files} is a folder of broken data files made by the `files` fixture. The rows in PROCESS run as
# real `python train.py` processes (an error before the trainer is built, and one inside Lightning's
# fit); the others in this process, raising the same PeftlabError the command line prints.
RUNTIME_ROWS = [
    ("no-gpu", ["trainer=gpu"], "trainer.accelerator=gpu, but torch"),
    ("lightning-refuses", ["trainer.strategy=bogus"], "trainer: You selected an invalid strategy name"),
    ("one-node-of-two", ["trainer.num_nodes=2"], "trainer.num_nodes=2, but this process was not started as one node of several"),
    ("csv-not-utf8", ["task=csv", "task.train_file={files}/latin1.csv", "task.validation_file={files}/latin1.csv"],
     "latin1.csv is not UTF-8 text (byte 0xe9"),
    ("csv-empty-label", ["task=csv", "task.train_file={files}/ragged.csv", "task.validation_file={files}/ragged.csv"],
     "ragged.csv row 2 has no value in column 'label'; every row needs its text and its label"),
    ("jsonl-null-label", ["task=csv", "task.train_file={files}/null.jsonl", "task.validation_file={files}/null.jsonl"],
     "null.jsonl row 1 has no value in column 'label'"),
    ("jsonl-not-records", ["task=csv", "task.train_file={files}/list.jsonl", "task.validation_file={files}/list.jsonl"],
     "list.jsonl row 1 is not a record with named columns"),
    ("csv-missing", ["task=csv", "task.train_file={files}/none.csv", "task.validation_file={files}/none.csv"],
     "task.train_file {files}/none.csv does not exist"),
    ("data-not-pulled", ["data_dir={files}/empty"], "SST-2 train file {files}/empty/glue/SST-2/train.tsv does not exist"),
    ("val-check-interval", ["trainer.val_check_interval=1000"],
     "trainer.val_check_interval=1000 is more than the 8 training batches per epoch (64 examples at trainer.batch_size=8)"),
    ("lora-targets-nothing", ["peft.target_modules=[qkv_proj]"],
     "peft.target_modules: 'qkv_proj' matches no module of this bert model; allowed: names its adaptable layers end in:"),
    ("lora-target-typo", ["peft.target_modules=[query,vlaue]"], "'vlaue' matches no module of this bert model"),
    ("lora-rank-above-width", ["rank=4096"],
     "peft.r=4096 is out of range for this bert model; allowed: 1 to 32, the smallest dimension of the layers it adapts"),
    ("adalora-init-r-above-width", ["peft=adalora", "rank=30"], "peft.init_r=45 is out of range for this bert model; allowed: 1 to 32"),
    ("adalora-no-budget-phase", ["peft=adalora", "peft.tinit=4", "peft.tfinal=4"], "peft.tinit=4 + peft.tfinal=4 leave no budgeting phase in 8"),
    ("adapter-wider-than-model", ["peft=adapter", "rank=64"], "peft.bottleneck_dim=64 is out of range for this bert model; allowed: 1 to 32"),
    ("adapter-names-nothing", ["peft=adapter", "peft.ffn_output=mlp.fc2", "peft.attention_output=attn.out"],
     "peft.attention_output / peft.ffn_output: no nn.Linear or Conv1D matched attention_output='attn.out' in this bert model"),
    ("houlsby-loses-attention", ["peft=adapter", "peft.attention_output=nope.dense"],
     "no nn.Linear or Conv1D matched attention_output='nope.dense' in this bert model; allowed: names its projections end in:"),
    ("loha-rank-above-width", ["peft=loha", "rank=64"], "peft.options.r=64 is out of range for this bert model"),
    ("ia3-targets-nothing", ["peft=ia3", "peft.options.target_modules=[key,fc1]", "peft.options.feedforward_modules=[fc1]"],
     "peft.options.target_modules: 'fc1' matches no module"),
    ("ia3-options-peft-refuses", ["peft=ia3", "peft.options.feedforward_modules=[query]"],
     "peft.options for IA3Config: `feedforward_modules` should be a subset of `target_modules`"),
    ("peft-config-class", ["peft=ia3", "peft.peft_config=IA4Config"], "peft.peft_config='IA4Config' is not a config class of peft"),
    ("random-model-heads", ["model.random_init.num_attention_heads=3"],
     "model.random_init: BertConfig refuses these settings: The hidden size (32) is not a multiple of the number of attention heads (3)"),
    ("max-length-above-positions", ["task.max_length=100000"], "task.max_length=100000 is out of range for this bert model; allowed: 8 to 128"),
    ("random-model-field-type", ["model.random_init.hidden_size=abc"], "model.random_init: BertConfig refuses these settings"),
    ("vocab-below-tokenizer", ["+model.random_init.vocab_size=1000"], "the model has embeddings for 1000 tokens, but its tokenizer has 30522"),
    ("loha-rank-not-a-number", ["peft=loha", "peft.options.r=abc"], "peft.options.r=abc is out of range; it must be an integer >= 1"),
    ("loha-option-type", ["peft=loha", "peft.options.alpha=[1,2]"], "peft cannot apply loha to this model"),
    ("csv-duplicate-header", ["task=csv", "task.train_file={files}/twice.csv", "task.validation_file={files}/twice.csv"],
     "twice.csv: the header names column 'text' more than once"),
    ("csv-extra-fields", ["task=csv", "task.train_file={files}/extra.csv", "task.validation_file={files}/extra.csv"],
     "extra.csv row 1 has more fields than the header's 2"),
    ("csv-empty-text", ["task=csv", "task.train_file={files}/blank.csv", "task.validation_file={files}/blank.csv"],
     "blank.csv row 2 has no value in column 'text'"),
    ("jsonl-list-text", ["task=csv", "task.train_file={files}/listtext.jsonl", "task.validation_file={files}/listtext.jsonl"],
     "listtext.jsonl row 1: column 'text' holds list ['good movie']; allowed: text or a number"),
    ("csv-is-a-folder", ["task=csv", "task.train_file={files}/folder.csv", "task.validation_file={files}/folder.csv"],
     "task.train_file {files}/folder.csv is a folder; allowed: a file"),
    ("conll-ragged", ["task=conll_files", "task.train_file={files}/ragged.conll", "task.validation_file={files}/ragged.conll"],
     "{files}/ragged.conll line 2 has 1 columns, but the file's first token line has 2"),  # the data's fault, not the model's
    ("no-virtual-tokens", ["peft=prompt_tuning", "peft.options.num_virtual_tokens=0"],
     "peft.options.num_virtual_tokens=0 is out of range; it must be an integer >= 1"),
    ("virtual-tokens-fill-the-model", ["peft=prompt_tuning", "peft.options.num_virtual_tokens=200", "task.max_length=64"],
     "peft.options.num_virtual_tokens=200 is out of range for this bert model; allowed: 1 to 64 beside task.max_length=64 (its 128 positions"),
    ("csv-test-file-missing", ["task=csv", "task.train_file={files}/test_train.csv", "task.validation_file={files}/test_train.csv",
                               "task.test_file={files}/none.csv"], "task.test_file {files}/none.csv does not exist; check the path"),
    ("csv-test-label-unseen", ["task=csv", "task.train_file={files}/test_train.csv", "task.validation_file={files}/test_train.csv",
                               "task.test_file={files}/test_unseen.csv"], "task csv: test example 2 has label '3', which is not in the label set ['0', '1']"),
    ("conll-test-sentence-cut", ["task=conll_files", "task.train_file={files}/short.conll", "task.validation_file={files}/short.conll",
                                 "task.test_file={files}/long.conll", "task.max_length=16"],  # a test split scored later, checked now
     "task conll_files: at task.max_length=16, 1 of 1 sentences to score would lose 23 tagged words to truncation, and their entities would drop out of the scores; allowed: task.max_length >= 62"),
    ("ddp-more-processes-than-cores", ["trainer=ddp", "trainer.devices=64"],  # accelerator=auto: the CPU, once torch says so
     "trainer.devices=64 is out of range; on CPU it is the number of processes, each a whole model; allowed: 1 to "),
    ("ddp-validation-smaller-than-ranks", ["trainer=ddp", "task.max_eval_samples=1"],
     "task sst2: the validation split has 1 example(s), fewer than the 2 processes that each score a share of it; allowed: at least 2"),
    ("t5-classification-tokenizer", ["model=tiny-t5"],  # its borrowed tokenizer appends no eos, which T5's head scores
     "this t5 T5ForSequenceClassification scores each input at its last eos token (id 2), but its tokenizer does not end inputs with it"),
    ("t5-classification-prompt-tuning", ["model=tiny-t5", "peft=prompt_tuning"],
     "peft=prompt_tuning passes the input as embeddings, and this t5 T5ForSequenceClassification finds the eos token it scores"),
    ("random-model-class", ["model.random_init.config_class=NoSuchConfig"], "model.random_init.config_class='NoSuchConfig' is not in transformers"),
    ("diverges", ["peft=full", "lr=1e30", "trainer.warmup_ratio=0"], "training diverged: the loss is nan at step"),
]
PROCESS = {"no-gpu", "diverges"}  # before the trainer is built, and inside Lightning's fit


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    (folder / "latin1.csv").write_bytes("text,label\ncafé,1\nthé,0\n".encode("latin-1"))
    (folder / "ragged.csv").write_text("text,label\ngood,1\nbad\nok,0\n")
    (folder / "null.jsonl").write_text('{"text": "good", "label": null}\n{"text": "bad", "label": 0}\n')
    (folder / "list.jsonl").write_text('["good", 1]\n')
    (folder / "twice.csv").write_text("text,text,label\na,b,1\n")
    (folder / "extra.csv").write_text("text,label\ngood,1,surplus\n")
    (folder / "blank.csv").write_text("text,label\ngood,1\n  ,0\n")
    (folder / "listtext.jsonl").write_text('{"text": ["good movie"], "label": 1}\n')
    (folder / "ragged.conll").write_text("EU B-ORG\nrejects\n\nGerman B-MISC\n")
    (folder / "test_train.csv").write_text("text,label\ngood,1\nbad,0\n")
    (folder / "test_unseen.csv").write_text("text,label\ngood,1\nbad,3\n")  # a label training never saw
    (folder / "short.conll").write_text("EU B-ORG\nrejects O\n\nGerman B-MISC\ncall O\n")
    (folder / "long.conll").write_text("".join(f"w{i} O\n" for i in range(30)))  # 30 words: more pieces than 16
    (folder / "folder.csv").mkdir()
    (folder / "empty").mkdir()
    return folder


@pytest.fixture(scope="module")
def process_results(tmp_path_factory, files, sst2_available) -> dict:
    """The PROCESS rows as real `python train.py` processes, two at a time (this machine has 2 cores)."""
    root = tmp_path_factory.mktemp("runtime")

    def run(row):
        name, overrides, _ = row
        args = [*TINY, *(o.format(files=files) for o in overrides), f"hydra.run.dir={root / name}"]
        return name, run_cli(*args, cwd=root, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (result, root / name) for name, result in pool.map(run, [r for r in RUNTIME_ROWS if r[0] in PROCESS])}


@pytest.mark.parametrize("name,overrides,message", RUNTIME_ROWS, ids=[row[0] for row in RUNTIME_ROWS])
def test_runtime_mistakes_are_one_line_and_leave_no_finished_folder(request, tmp_path, files, name, overrides, message):
    message = message.format(files=files)
    if name in PROCESS:
        result, run_dir = request.getfixturevalue("process_results")[name]
        assert_one_line_error(result, message)
    else:
        run_dir = tmp_path / "run"
        with pytest.raises(PeftlabError) as caught:
            train_tiny(run_dir, *(o.format(files=files) for o in overrides))
        assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (run_dir / METRICS_FILE).exists()


# -- the folder of a finished run ---------------------------------------------------------------


def test_a_finished_run_folder_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / METRICS_FILE).write_text('{"status": "finished"}\n')
    result = run_cli("model=tiny-bert", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(result, f"{run_dir} already holds a finished run (metrics.json); choose another folder")
    assert sorted(p.name for p in run_dir.iterdir()) == [METRICS_FILE]  # Hydra wrote nothing into it
    assert (run_dir / METRICS_FILE).read_text() == '{"status": "finished"}\n'


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "multirun"])
def test_the_default_folder_must_be_creatable(tmp_path, sweep):
    """The default folder is new, but it goes inside runs/ (multirun/ for -m), which must be a folder."""
    blocker = tmp_path / ("multirun" if sweep else "runs")
    blocker.write_text("not a folder\n")
    args = ["-m", "rank=4,8"] if sweep else []
    result = run_cli(*args, "model=tiny-bert", cwd=tmp_path)
    parent = "multirun" if sweep else "runs/sst2/tiny-bert/lora-r8-s42"
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    assert_one_line_error(result, f"{key}={parent}: {blocker.name} is a file; allowed: a folder (it is created if missing)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker.name]


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "bogus=1"], "--set bogus=1: bogus: unknown config key; allowed: model, peft"),
    (["--steps", "30"], "--steps 30: give a multiple of 50"),
    (["--repeats", "0"], "--repeats 0: give 1 or more"),
])  # fmt: skip
def test_the_bench_refuses_bad_arguments_before_it_trains(args, message):
    result = run_command([str(ROOT / "bench" / "throughput.py"), *args], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"throughput.py: error: {message}")


# -- sweep.py, peftlab.evaluate and peftlab.report ------------------------------------------------

SWEEP_HEADER = "program: train.py\ncommand:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - ${args_no_hyphens}\n"
# (arguments, what the error line says); {tmp} is the test's folder, where sweep files are written.
SWEEP_ROWS = [
    (["sweeps/lora.yaml", "model=tiny-bert", "task.max_train_samples=2000"],
     "sweeps/lora.yaml: trainer.val_check_interval=100 is more than the 32 training batches per epoch (2000 examples at trainer.batch_size=64"),
    (["sweeps/lora.yaml", "rank=4"], "parameters.rank: rank is searched by this sweep; remove rank=... from the command line"),
    (["sweeps/lora.yaml", "peft=lorra"], "peft=lorra is not an option"),
    (["sweeps/nothing.yaml"], "sweeps/nothing.yaml: no such sweep file"),
    (["sweeps/lora.yaml", "--trials", "0"], "--trials=0 is out of range; it must be an integer >= 1"),
    (["sweeps/lora.yaml", "--workers", "999"], "--workers=999 is out of range; allowed: 1 to "),  # more than the cores
    (["sweeps/lora.yaml", "--trials", "1", "--workers", "2"], "--workers=2 is out of range; allowed: 1 to 1 (no more than --trials=1"),
    (["sweeps/lora.yaml", "--trials", "many"], "argument --trials: invalid int value: 'many'"),
    (["sweeps/lora.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["sweeps/lora.yaml", "+foo=1"], "foo: unknown config key"),
    (["sweeps/lora.yaml", "--storage", "bogus://x"], "--storage bogus://x: Can't load plugin: sqlalchemy.dialects:bogus; allowed:"),
    (["sweeps/lora.yaml", "--out", "{tmp}/not-yaml.yaml"], "not-yaml.yaml is a file; allowed: a folder"),
    ([], "the following arguments are required: sweep_file"),
    (["{tmp}/bad-metric.yaml"], "metric.name=accuracy is not logged by train.py"),
    (["{tmp}/bad-key.yaml"], "parameters.peft.rr: peft.rr is not a key of the composed config"),
    (["{tmp}/bad-range.yaml"], "parameters.lr: min=0.1 > max=0.001; min must be <= max"),
    (["{tmp}/not-yaml.yaml"], "not valid YAML"),
    (["{tmp}/latin1.yaml"], "latin1.yaml: not UTF-8 text (byte 0xe9"),
    (["{tmp}/unlogged-metric.yaml"], "metric.name=val/acc is not logged by task sst2; allowed: val/accuracy, val/f1, val/loss"),
    (["{tmp}/mapping-values.yaml"], "parameters.model.random_init.values: a value that is a mapping cannot be passed on the command line"),
    (["sweeps/lora.yaml", "--study", "../escape"], "--study ../escape: a study name is one folder name under --out"),
    (["sweeps/lora.yaml", "--seed", "-1"], "--seed=-1 is out of range; it must be in [0, 4294967295]"),
    (["{tmp}/wrong-goal.yaml"], "metric.goal=minimize contradicts val/accuracy, where higher is better; allowed: metric.goal=maximize"),
    (["{tmp}/ok.yaml", "+foo=1"], "ok.yaml (with its constants and the command line): foo: unknown config key"),
]
SWEEP_FILES = {
    "bad-metric.yaml": "method: random\nmetric: {name: accuracy, goal: maximize}\nparameters:\n  rank: {values: [4, 8]}\n",
    "bad-key.yaml": "method: random\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  peft.rr: {values: [4, 8]}\n",
    "bad-range.yaml": "method: random\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  lr: {distribution: log_uniform_values, min: 0.1, max: 0.001}\n",
    "not-yaml.yaml": "method: [random\n",
    "ok.yaml": "method: random\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  rank: {values: [4, 8]}\n",
    "mapping-values.yaml": "method: random\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  model.random_init: {values: [{hidden_size: 32}]}\n",
    "wrong-goal.yaml": "method: random\nmetric: {name: val/accuracy, goal: minimize}\nparameters:\n  rank: {values: [4, 8]}\n",
    "unlogged-metric.yaml": "method: random\nmetric: {name: val/acc, goal: maximize}\nparameters:\n  rank: {values: [4, 8]}\n",
}


@pytest.mark.parametrize("args,message", SWEEP_ROWS, ids=[" ".join(row[0]) or "no-args" for row in SWEEP_ROWS])
def test_sweep_mistakes_are_one_line_before_any_trial(tmp_path, args, message):
    for name, body in SWEEP_FILES.items():
        (tmp_path / name).write_text(SWEEP_HEADER + body)
    (tmp_path / "latin1.yaml").write_bytes(("# caf\xe9\n" + SWEEP_HEADER).encode("latin-1"))
    out = tmp_path / "sweeps"
    argv = [str(ROOT / "sweep.py"), *(a.format(tmp=tmp_path) for a in args), f"data_dir={DATA}"]
    argv += [] if "--out" in args else ["--out", str(out)]
    if not args:
        argv = [str(ROOT / "sweep.py")]
    result = run_command(argv, cwd=ROOT, timeout=60)
    assert_one_line_error(result, message.format(tmp=tmp_path))
    assert not out.exists() or not list(out.rglob(METRICS_FILE))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sst2_available) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_tiny(run_dir, "peft=lora", "rank=4")
    return run_dir


def broken_copy(run: Path, where: Path, how: str) -> Path:
    """A copy of a finished run folder with one part broken as a user's disk might break it."""
    copy = where / how
    shutil.copytree(run, copy)
    if how == "no-weights":
        shutil.rmtree(copy / "weights")
    elif how == "truncated-metrics":
        (copy / METRICS_FILE).write_text((copy / METRICS_FILE).read_text()[:40])
    elif how == "corrupt-config":
        (copy / "config.yaml").write_text("model: [unclosed\n")
    elif how == "empty-weights":
        shutil.rmtree(copy / "weights")
        (copy / "weights").mkdir()
    elif how == "corrupt-adapter":
        (copy / "weights" / "adapter_config.json").write_text("{not json")
    elif how == "unknown-config-key":
        (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "bogus_key: 1\n")
    elif how == "empty-config":
        (copy / "config.yaml").write_text("")
    elif how == "eval-not-a-mapping":
        metrics = json.loads((copy / METRICS_FILE).read_text())
        metrics["eval"] = [1]
        (copy / METRICS_FILE).write_text(json.dumps(metrics))
    elif how == "old-metrics":
        metrics = json.loads((copy / METRICS_FILE).read_text())
        del metrics["eval"]
        (copy / METRICS_FILE).write_text(json.dumps(metrics))
    return copy


# (arguments, what the error line says); {run} a finished run, {broken:HOW} a broken copy of it.
EVALUATE_ROWS = [
    ([], "no run folder given; usage: python -m peftlab.evaluate RUN_FOLDER"),
    (["{tmp}/nowhere"], "{tmp}/nowhere: no such run folder"),
    (["{tmp}"], "{tmp} is not a finished run (no metrics.json)"),
    (["{run}", "split=bogus"], "split=bogus is not a split; allowed: train, validation, test"),
    (["{run}", "split=test"], "task sst2 has no labelled test split (GLUE's test labels are not public); allowed: train, validation"),
    (["{run}", "fold=2"], "fold=2: unknown argument; allowed: split=, out="),
    (["{broken:no-weights}"], "no-weights/weights: no saved weights in this run folder"),
    (["{broken:truncated-metrics}"], "truncated-metrics/metrics.json is not a run record"),
    (["{broken:corrupt-config}"], "corrupt-config/config.yaml is not a readable run config"),
    (["{broken:old-metrics}"], "old-metrics/metrics.json is not a run record"),
    (["{broken:empty-weights}"], "empty-weights/weights: the saved weights cannot be loaded"),
    (["{broken:eval-not-a-mapping}"], "eval-not-a-mapping/metrics.json is not a run record: eval is [1], not a mapping"),
    (["{broken:corrupt-adapter}"], "corrupt-adapter/weights: the saved weights cannot be loaded"),
    (["{broken:unknown-config-key}"], "unknown-config-key/config.yaml: bogus_key: unknown config key"),
    (["{broken:empty-config}"], "empty-config/config.yaml is not a run config: it is empty or not a mapping"),
    (["{run}", "out={tmp}/file.txt"], "out={tmp}/file.txt: {tmp}/file.txt is a file; allowed: a folder"),
    (["{run}", "out={tmp}/file.txt/sub"], "out={tmp}/file.txt/sub: {tmp}/file.txt is a file; allowed: a folder"),
    (["{run}", "out=/proc/sys"], "out=/proc/sys: no file can be created in this folder"),
]
REPORT_ROWS = [
    ([], "no runs given: pass RUN_FOLDER... or --runs-dir with --methods and --seeds"),
    (["{run}", "--p", "2"], "--p 2.0 is out of range; it must be in (0, 1)"),
    (["{run}", "--p", "half"], "argument --p: invalid float value: 'half'"),
    (["{run}", "--out", "{tmp}/file.txt"], "--out={tmp}/file.txt: {tmp}/file.txt is a file; allowed: a folder"),
    (["{run}", "--out", "/proc/sys"], "--out=/proc/sys: no file can be created in this folder"),
    (["{run}", "--split", "bogus"], "--split bogus is not a split; allowed: train, validation, test"),
    (["{run}", "--group-by", "colour"], "--group-by colour: not a grouping key; allowed: model, task"),
    (["--runs-dir", "{tmp}"], "--runs-dir, --methods and --seeds go together"),
    (["--tasks", "sst2", "{tmp}"], "--runs-dir, --methods and --seeds go together (and --tasks with them)"),
    (["{tmp}/nowhere"], "no finished runs to report"),
    (["{broken:truncated-metrics}"], "truncated-metrics/metrics.json is not a run record: not valid JSON"),
    (["{broken:old-metrics}"], "old-metrics/metrics.json is not a run record: it has no eval"),
    (["{run}", "--evals", "{tmp}/nowhere"], "--evals {tmp}/nowhere: no such folder"),
    (["{broken:eval-not-a-mapping}"], "eval-not-a-mapping/metrics.json is not a run record: eval is [1], not a mapping"),
    (["{run}", "--baseline", "nosuch"], "--baseline nosuch: no run of that method; allowed: lora"),
]
# Rows found only once the model loads: ~12 s each as a new process, for the imports alone.
LOADS_THE_MODEL = [["{run}", "split=test"], ["{broken:empty-weights}"], ["{broken:corrupt-adapter}"]]


def _expand(args: list[str], finished_run: Path, tmp: Path) -> list[str]:
    (tmp / "file.txt").write_text("not a folder\n")
    out = []
    for arg in args:
        if arg.startswith("{broken:"):
            how = arg[len("{broken:") : -1]
            out.append(str(tmp / how) if (tmp / how).exists() else str(broken_copy(finished_run, tmp, how)))
        else:
            out.append(arg.format(run=finished_run, tmp=tmp))
    return out


@pytest.mark.parametrize("args,message", EVALUATE_ROWS, ids=[" ".join(row[0]) or "no-args" for row in EVALUATE_ROWS])
def test_evaluate_mistakes_are_one_line(tmp_path, finished_run, capsys, args, message):
    argv = _expand(args, finished_run, tmp_path)
    if args in LOADS_THE_MODEL:  # the same main() in this process: torch is imported here already
        from peftlab.evaluate import main

        with pytest.raises(SystemExit) as exited:
            main(argv)
        captured = capsys.readouterr()
        result = subprocess.CompletedProcess(argv, exited.value.code, captured.out, captured.err)
    else:  # as a user runs it: these fail before torch loads, in about a second
        result = run_command(["-m", "peftlab.evaluate", *argv], timeout=120)
    assert_one_line_error(result, message.format(tmp=tmp_path))


@pytest.mark.parametrize("args,message", REPORT_ROWS, ids=[" ".join(row[0]) or "no-args" for row in REPORT_ROWS])
def test_report_mistakes_are_one_line(tmp_path, finished_run, args, message):
    out = tmp_path / "results"
    out_args = [] if "--out" in args else ["--out", str(out)]
    result = run_command(["-m", "peftlab.report", *_expand(args, finished_run, tmp_path), *out_args], timeout=120)
    assert_one_line_error(result, message.format(tmp=tmp_path))
    assert not (out / "table.md").exists()
