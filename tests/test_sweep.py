"""Sweeps: W&B sweep files parsed into Optuna searches, checked up front, run with pruning,
resumed after SIGKILL, shared by two workers through PostgreSQL, and accepted by train.py as W&B's
agent would call it."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import CONF, ROOT, TINY
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from peftlab.errors import ConfigError
from peftlab.sweep import quantiles
from peftlab.sweep.check import check_against_config
from peftlab.sweep.spec import DISTRIBUTIONS, load_spec

HEADER = "program: train.py\ncommand:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - ${args_no_hyphens}\n"
Q_LOW, Q_HIGH = quantiles.QUANTILE_LOW, quantiles.QUANTILE_HIGH


def write_spec(folder: Path, body: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(HEADER + body)
    return path


def one_param(tmp_path: Path, param: str):
    spec = load_spec(write_spec(tmp_path, f"method: random\nmetric: {{name: val/loss}}\nparameters:\n  x: {param}\n"))
    return spec.params[0]


# (the parameter as W&B writes it, its Optuna space, [(Optuna's draw, the value train.py gets)])
TWINS = {
    "constant": ("{value: 3}", None, []),
    "categorical": ("{values: [a, b]}", CategoricalDistribution(["a", "b"]), [("b", "b")]),
    "int_uniform": ("{min: 2, max: 9}", IntDistribution(2, 9), [(5, 5)]),
    "uniform": ("{distribution: uniform, min: 0.1, max: 0.5}", FloatDistribution(0.1, 0.5), [(0.3, 0.3)]),
    "q_uniform": ("{distribution: q_uniform, min: 4, max: 32, q: 4}", IntDistribution(4, 32, step=4), [(8, 8)]),
    "log_uniform": ("{distribution: log_uniform, min: -4, max: 2}", FloatDistribution(math.exp(-4), math.exp(2), log=True), [(1.0, 1.0)]),
    "log_uniform_values": ("{distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}", FloatDistribution(1e-5, 1e-2, log=True), [(1e-3, 1e-3)]),
    "q_log_uniform": ("{distribution: q_log_uniform, min: 0, max: 4.6, q: 5}", FloatDistribution(1.0, math.exp(4.6), log=True), [(7.4, 5), (88.0, 90)]),
    "q_log_uniform_values": ("{distribution: q_log_uniform_values, min: 1.0e-4, max: 0.1, q: 1.0e-4}", FloatDistribution(1e-4, 0.1, log=True), [(0.00123456, 0.0012)]),
    "inv_log_uniform": ("{distribution: inv_log_uniform, min: 2, max: 5}", FloatDistribution(math.exp(-5), math.exp(-2), log=True), [(0.05, 0.05)]),
    "inv_log_uniform_values": ("{distribution: inv_log_uniform_values, min: 1.0e-4, max: 1.0e-2}", FloatDistribution(1e-4, 1e-2, log=True), [(1e-3, 1e-3)]),
    "normal": ("{distribution: normal, mu: 0.1, sigma: 0.02}", FloatDistribution(Q_LOW, Q_HIGH), [(0.5, 0.1), (0.975, 0.1 + 1.959964 * 0.02)]),
    "q_normal": ("{distribution: q_normal, mu: 10, sigma: 3, q: 2}", FloatDistribution(Q_LOW, Q_HIGH), [(0.5, 10), (0.9, 14)]),
    "log_normal": ("{distribution: log_normal, mu: 0, sigma: 1}", FloatDistribution(Q_LOW, Q_HIGH), [(0.5, 1.0), (0.975, math.exp(1.959964))]),
    "q_log_normal": ("{distribution: q_log_normal, mu: 2.0794, sigma: 1, q: 1}", FloatDistribution(Q_LOW, Q_HIGH), [(0.5, 8)]),
    "beta": ("{distribution: beta, a: 2, b: 2}", FloatDistribution(Q_LOW, Q_HIGH), [(0.5, 0.5), (0.25, 0.326352)]),
    "q_beta": ("{distribution: q_beta, a: 1, b: 1, q: 0.1}", FloatDistribution(Q_LOW, Q_HIGH), [(0.33, 0.3)]),
}


def test_the_twin_table_covers_every_wandb_distribution():
    assert set(TWINS) == set(DISTRIBUTIONS)


@pytest.mark.parametrize("kind", sorted(TWINS))
def test_every_wandb_distribution_maps_to_its_optuna_twin(tmp_path, kind):
    body, space, draws = TWINS[kind]
    param = one_param(tmp_path, body)
    assert param.kind == kind
    assert param.space == space
    if space is None:
        assert param.value == 3 and param.sample(None) == 3
    for drawn, expected in draws:
        value = param.convert(drawn)
        assert value == (expected if isinstance(expected, str) else pytest.approx(expected, rel=1e-5))
        assert type(value) is type(expected) or isinstance(expected, float)  # ints stay ints (rank=8, not 8.0)
    if kind.removeprefix("q_") in ("normal", "log_normal", "beta"):
        assert param.name == "x:quantile"  # plots and importances show what Optuna sampled
    if space is not None:  # and a real Optuna trial draws within the extremes the up-front check tries
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        value = param.sample(study.ask())
        ends = param.extremes()
        assert value in ends if isinstance(space, CategoricalDistribution) else min(ends) <= value <= max(ends)


def test_grid_enumerates_int_and_q_uniform_ranges(tmp_path):
    spec = load_spec(write_spec(tmp_path, """method: grid
metric: {name: val/accuracy, goal: maximize}
parameters:
  rank: {min: 2, max: 4}
  lr: {distribution: q_uniform, min: 0.1, max: 0.3, q: 0.1}
  peft: {value: lora}
"""))
    assert spec.grid() == {"rank": [2, 3, 4], "lr": [0.1, 0.2, 0.3]}
    assert isinstance(spec.sampler(0), optuna.samplers.GridSampler)
    assert [p.key for p in spec.constants] == ["peft"]


BAD = {
    "unknown method": ("method: bayesian\nmetric: {name: val/loss}\nparameters:\n  lr: {values: [0.1]}\n",
                       r"sweep\.yaml: method: method=bayesian is not allowed; allowed: bayes, grid, random$"),
    "unknown distribution": ("method: random\nmetric: {name: val/loss}\nparameters:\n  lr: {distribution: gaussian, mu: 0, sigma: 1}\n",
                             r"sweep\.yaml: parameters\.lr\.distribution: distribution=gaussian is not a W&B distribution; allowed: constant, categorical, .*q_beta$"),
    "not a config key": ("method: random\nmetric: {name: val/loss}\nparameters:\n  rnk: {values: [4, 8]}\n",
                         r"sweep\.yaml: parameters\.rnk: rnk is not a key of the composed config .*; allowed: alpha, data_dir, logger, lr, model, peft, rank, resume, seed, task, trainer$"),
    "not a key of the method": ("method: random\nmetric: {name: val/loss}\nparameters:\n  peft: {value: adalora}\n  peft.init_rr: {values: [8]}\n",
                                r"sweep\.yaml: parameters\.peft\.init_rr: peft\.init_rr is not a key of the composed config \(with peft=adalora\); allowed: .*peft\.init_r, "),
    "min > max": ("method: random\nmetric: {name: val/loss}\nparameters:\n  lr: {distribution: log_uniform_values, min: 0.1, max: 0.001}\n",
                  r"sweep\.yaml: parameters\.lr: min=0\.1 > max=0\.001; min must be <= max$"),
    "floats for an integer key": ("method: random\nmetric: {name: val/loss}\nparameters:\n  rank: {distribution: q_uniform, min: 4.0, max: 32.0, q: 4.0}\n",
                                  r"parameters\.rank: rank is an integer, but W&B's q_uniform gives floats .*; allowed for integers: int_uniform, values$"),
    "out of range": ("method: random\nmetric: {name: val/loss}\nparameters:\n  rank: {values: [0, 4]}\n",
                     r"sweep\.yaml: parameters\.rank: rank=0 is out of range; it must be an integer >= 1$"),
    "not an option": ("method: grid\nmetric: {name: val/loss}\nparameters:\n  peft: {values: [lora, lorra]}\n",
                      r"sweep\.yaml: parameters\.peft: peft=lorra is not an option; allowed: adalora, adapter, bitfit, dora, full, ia3, linear_probe, loha, lokr, lora, loraplus, pissa, prefix_tuning, prompt_tuning, qlora, rslora, vera, zero_shot$"),
    "grid over a continuous range": ("method: grid\nmetric: {name: val/loss}\nparameters:\n  lr: {distribution: uniform, min: 0.1, max: 0.2}\n",
                                     r"parameters\.lr: grid search needs a finite set; allowed: values, value, int_uniform, q_uniform \(got uniform\)$"),
    "a metric train.py does not log": ("method: random\nmetric: {name: accuracy}\nparameters:\n  lr: {values: [0.1]}\n",
                                       r"metric\.name: metric\.name=accuracy is not logged by train\.py; allowed: .*val/accuracy"),
    "other early termination": ("method: random\nmetric: {name: val/loss}\nparameters:\n  lr: {values: [0.1]}\nearly_terminate: {type: median}\n",
                                r"early_terminate\.type: type=median is not allowed; allowed: hyperband$"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_file_is_rejected_with_file_key_and_what_is_allowed(tmp_path, case):
    body, message = BAD[case]
    with pytest.raises(ConfigError, match=message):
        check_against_config(load_spec(write_spec(tmp_path, body)), CONF, [])


def test_list_valued_choices_pass_the_check_and_reach_trials_as_lists(tmp_path):
    body = "method: grid\nmetric: {name: val/loss}\nparameters:\n  peft.target_modules: {values: [[query, value], [query]]}\n"
    spec = load_spec(write_spec(tmp_path, body))
    check_against_config(spec, CONF, ["model=tiny-bert"])  # each list is a valid target_modules
    (param,) = spec.params
    assert param.extremes() == [["query", "value"], ["query"]]
    assert spec.overrides({"peft.target_modules": param.convert("[query,value]")}) == ["peft.target_modules=[query,value]"]


def test_command_without_hydra_style_arguments_is_rejected(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("program: train.py\nmethod: random\nmetric: {name: val/loss}\nparameters:\n  lr: {values: [0.1]}\ncommand:\n  - ${env}\n  - ${args}\n")
    with pytest.raises(ConfigError, match=r"command: the command must pass \$\{args_no_hyphens\}"):
        load_spec(path)


def test_bad_sweep_file_stops_sweep_py_before_any_trial(tmp_path):
    path = write_spec(tmp_path, BAD["min > max"][0])
    result = sweep_cli(path, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}: parameters.lr: min=0.1 > max=0.001; min must be <= max"]
    assert not (tmp_path / "out").exists()  # no storage, no trial folder


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_wandb_agent_command_from_each_sweep_file_is_accepted_by_train_py(sweep_file):
    """Build the command line W&B's agent builds (its own argument code), then compose and validate it."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    from peftlab.cli import compose_config, user_overrides
    from peftlab.config import validate

    doc = yaml.safe_load(sweep_file.read_text())
    spec = load_spec(sweep_file)
    assert sweep_file.read_text().startswith("# python sweep.py sweeps/")  # the file opens with its command
    assert doc["program"] == "train.py"
    for pick in (0, -1):  # every key at one end of its range, then at the other
        values = {p.key: p.extremes()[pick] for p in spec.params}
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
        argv = agent_command(create_sweep_command(list(doc["command"])), args, program=doc["program"])
        assert argv[:3] == ["/usr/bin/env", "python", "train.py"]
        cfg = validate(compose_config(CONF, user_overrides(argv[3:])))
        for key, value in values.items():
            typed = cfg
            for part in key.split("."):
                typed = getattr(typed, part)
            assert typed == value or getattr(typed, "name", None) == value or getattr(typed, "method", None) == value


def agent_command(command: list, args: dict, program: str) -> list[str]:
    """wandb_agent.Agent._command_run's macro expansion, verbatim in behaviour."""
    sweep_vars = {**args, "interpreter": ["python"], "program": [program], "env": ["/usr/bin/env"]}
    out: list[str] = []
    for c in map(str, command):
        out += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return out


# ---------------------------------------------------------------------------------------------
# Real sweeps on the tiny random BERT; one torch thread per process, as two share 2 cores

FAST = [*TINY, "trainer.threads=1"]


def sweep_cli(*args, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def sweep_main(*args) -> int:
    """`python sweep.py ARGS` in this process, where torch is already imported (saves ~8 s a process)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("sweep_script", ROOT / "sweep.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.main([str(a) for a in args])


@pytest.fixture
def torch_threads():
    """In-process trials set trainer.threads=1; give later tests torch's thread count back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def states(study: optuna.Study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


PRUNE_SPEC = """method: random
metric: {name: val/loss, goal: minimize}
parameters:
  peft: {value: full}
  lr: {values: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 1.0e+30]}
  trainer.val_check_interval: {value: 2}
early_terminate: {type: hyperband, min_iter: 1, max_iter: 1, eta: 2}
"""


def test_four_trial_sweep_prunes_a_trial_and_records_a_diverged_one(tmp_path, sst2_available, torch_threads):
    """In-process: Hyperband (eta 2, one bracket) prunes at validations; lr=1e30 diverges to NaN."""
    from peftlab.sweep.check import base_overrides
    from peftlab.sweep.outputs import write_outputs
    from peftlab.sweep.runner import SweepSettings, default_storage, run_sweep

    spec = load_spec(write_spec(tmp_path, PRUNE_SPEC))
    base = base_overrides(spec, [*FAST, "trainer.warmup_ratio=0"])
    sweep_dir = tmp_path / "prune"
    settings = SweepSettings(spec_path=spec.path, conf_dir=CONF, base_overrides=base, study_name="prune",
                             storage_url=default_storage(sweep_dir), sweep_dir=sweep_dir, trials=4, seed=PRUNE_SEED)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = run_sweep(settings)
    assert not [w for w in caught if "Heartbeat of storage" in str(w.message)]  # the runner beats itself

    by_state = {s: [t for t in study.trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) + len(by_state[TrialState.PRUNED]) == 4
    assert len(by_state[TrialState.PRUNED]) >= 1 and len(by_state[TrialState.COMPLETE]) >= 1
    assert by_state[TrialState.FAIL], "lr=1e30 was never drawn: pick another PRUNE_SEED"
    for t in by_state[TrialState.FAIL]:
        assert t.user_attrs["values"]["lr"] == 1e30
        assert t.user_attrs["error"].startswith("TrainingError: training diverged: the loss is nan")
    for t in study.trials:  # each trial is a run folder; only complete ones are finished runs
        run_dir = Path(t.user_attrs["run_dir"])
        assert "group: prune" in (run_dir / "config.yaml").read_text()  # W&B groups a sweep's runs
        assert (run_dir / "metrics.json").is_file() == (t.state == TrialState.COMPLETE)
    pruned = by_state[TrialState.PRUNED][0]
    assert 1 <= len(pruned.intermediate_values) < 4  # stopped before its 4th validation

    written = write_outputs(study, spec, sweep_dir, base)
    rows = (sweep_dir / "trials.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["trial", "state", "val/loss", "lr"]
    assert [r.split(",")[1] for r in rows[1:]] == sorted((r.split(",")[1] for r in rows[1:]), key=["complete", "pruned", "fail"].index)
    best = study.best_trial
    assert rows[1].split(",")[0] == str(best.number)
    assert (sweep_dir / "best.txt").read_text().split() == [*base, f"lr={best.user_attrs['values']['lr']!r}"]
    assert (sweep_dir / "trials.md").read_text().count("\n") == 2 + len(study.trials)
    for name in ("history.png", "parallel.png"):
        assert written[name] == str(sweep_dir / name) and (sweep_dir / name).stat().st_size > 1000


PRUNE_SEED = 1


def test_resume_after_sigkill_ends_with_exactly_n_finished_trials(tmp_path, sst2_available, torch_threads, capsys):
    spec = write_spec(tmp_path, "method: random\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}\n")
    args = [spec, "--trials", "2", "--study", "kill", "--out", tmp_path, *FAST, "task.max_train_samples=128"]
    url = f"sqlite:///{tmp_path / 'kill' / 'optuna.db'}"

    first = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
    victim = tmp_path / "kill" / "trial-0001"
    deadline = time.time() + 120
    while not (victim / "config.yaml").exists():  # trial 1 is training (config.yaml is written just before fit)
        assert first.poll() is None and time.time() < deadline, "the sweep ended before trial 1 trained"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert states(load_study(url, "kill")) == {0: "COMPLETE", 1: "RUNNING"}  # what SIGKILL leaves behind

    capsys.readouterr()
    assert sweep_main(*args) == 0  # the same command again
    printed = capsys.readouterr().out
    study = load_study(url, "kill")
    assert states(study) == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # exactly N=2 finished, the killed one kept
    assert "died mid-trial" in study.trials[1].user_attrs["error"]
    assert study.trials[2].user_attrs["retry_of"] == 1 and study.trials[2].params == study.trials[1].params
    assert not (victim / "metrics.json").exists()
    assert [line.split()[:3] for line in printed.splitlines() if line.startswith("trial ")] == [["trial", "2", "complete"]]
    assert (tmp_path / "kill" / "trials.csv").read_text().splitlines()[-1].startswith("1,fail,")


@pytest.fixture(scope="session")
def shared_storage(tmp_path_factory):
    """PostgreSQL from Debian's packages on loopback (scripts/postgres.sh); CI may start it and set
    PEFTLAB_POSTGRES_URL."""
    if os.environ.get("PEFTLAB_POSTGRES_URL"):
        yield os.environ["PEFTLAB_POSTGRES_URL"]
        return
    data = Path(f"/tmp/peftlab-pg-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "PGDATA": str(data), "PGPORT": str(55000 + os.getpid() % 1000)}
    started = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start"], capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0, f"scripts/postgres.sh start failed: {started.stderr[-1500:]}"
    yield started.stdout.strip()
    subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop"], env=env, timeout=60)
    subprocess.run(["rm", "-rf", str(data)])


def test_two_workers_share_one_study_through_postgres(tmp_path, shared_storage, sst2_available, torch_threads):
    """`sweep.py --workers 2`: this process is worker 0, a child process is worker 1, both on PostgreSQL."""
    spec = write_spec(tmp_path, "method: bayes\nmetric: {name: val/accuracy, goal: maximize}\nparameters:\n  rank: {values: [2, 4, 8]}\n  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}\n")
    study_name = f"workers-{uuid.uuid4().hex[:8]}"
    assert sweep_main(spec, "--trials", "4", "--workers", "2", "--storage", shared_storage, "--study", study_name, "--out", tmp_path,
                      *FAST, "task.max_train_samples=128") == 0  # trials long enough for the second process to join
    study = load_study(shared_storage, study_name)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # N trials, no duplicate numbers, none extra
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both processes took trials
    assert sorted(p.name for p in (tmp_path / study_name).glob("trial-*")) == [f"trial-000{i}" for i in range(4)]


@pytest.mark.parametrize("flag", ["--trials", "--max-failures"])
def test_zero_counts_are_rejected_not_replaced_by_defaults(tmp_path, flag):
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "sweeps/lora.yaml", flag, "0", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {flag}=0 is out of range; it must be an integer >= 1"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("error", ["diverged", "interrupted"])
def test_a_failed_trial_is_data_but_a_signal_stops_the_sweep(tmp_path, monkeypatch, error):
    """A trial that fails (a diverged loss) is recorded and the sweep goes on; one stopped by SIGTERM
    or Ctrl-C (the recipe's RunInterrupted) is recorded and stops the sweep, with the signal's status."""
    from peftlab.errors import RunInterrupted, TrainingError
    from peftlab.sweep import trial as trial_module

    raised = TrainingError("training diverged") if error == "diverged" else RunInterrupted("stopped by SIGTERM at step 3 of 8", 143)

    def stopped(*args):
        raise raised

    monkeypatch.setattr(trial_module, "_train", stopped)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    if error == "diverged":
        assert trial_module.run_trial(study, trial, CONF, [], tmp_path / "trial", "val/accuracy") == TrialState.FAIL
    else:
        with pytest.raises(RunInterrupted) as caught:
            trial_module.run_trial(study, trial, CONF, [], tmp_path / "trial", "val/accuracy")
        assert caught.value.exit_code == 143
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["error"] == ("TrainingError: training diverged" if error == "diverged" else "interrupted")


def test_a_trial_whose_metric_is_undefined_fails_with_the_reason(tmp_path, monkeypatch):
    """Pearson over one example is NaN, which Optuna cannot rank: the trial fails saying so, its run kept."""
    from types import SimpleNamespace

    import peftlab.recipe
    from peftlab.sweep import trial as trial_module

    finished = SimpleNamespace(record=SimpleNamespace(eval=SimpleNamespace(values={"pearson": math.nan, "loss": 0.5})))
    monkeypatch.setattr(peftlab.recipe, "train", lambda *args, **kwargs: finished)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    assert trial_module.run_trial(study, trial, CONF, [*TINY, "task=stsb"], tmp_path / "trial", "val/pearson") == TrialState.FAIL
    (frozen,) = study.get_trials()
    assert frozen.user_attrs["error"] == f"ValueError: val/pearson is undefined (nan) for the finished run in {tmp_path / 'trial'}, so the trial has no value"
