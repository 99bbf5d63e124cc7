"""The study and its workers: exactly N finished trials, however many processes or machines share it.

Each worker loops: under the study's lock, fail the trials of dead workers, count, and take a new
trial only while finished + running < N; then run it outside the lock. Finished means COMPLETE or
PRUNED, so a rerun of the same command continues the study, and a trial lost to SIGKILL turns
into a FAIL (with its reason) and its parameters are queued to run again.

- The lock: an flock beside an SQLite file (processes of one machine), or a PostgreSQL advisory
  lock (any number of machines on one database URL). Other URLs run without it and may overshoot
  N by a trial per extra worker.
- Dead workers: a trial records its worker's host, pid and process start time, so a worker on the
  same machine sees at once that the process is gone; a worker on another machine is caught by
  Optuna's heartbeat after GRACE_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from peftlab.errors import ConfigError, PeftlabError
from peftlab.quiet import silence_known_warnings
from peftlab.sweep.spec import SweepSpec, load_spec
from peftlab.sweep.trial import ERROR_ATTR, run_trial, run_trial_isolated

HEARTBEAT_S = 20  # a running trial's pulse in the storage
GRACE_S = 90  # no pulse for this long: the trial's worker is gone (another machine's crash)
POLL_S = 1.0  # a worker with no trial to take waits this long for running ones to finish or die
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"
SWEEP_ATTR = "sweep"


class SweepError(PeftlabError):
    """The sweep cannot go on (too many failed trials, a worker process failed)."""


@dataclass
class SweepSettings:
    spec_path: Path
    conf_dir: Path
    base_overrides: list[str]  # every trial: the command line's overrides and the file's constants
    study_name: str
    storage_url: str
    sweep_dir: Path  # trial-NNNN/ run folders and the sweep's tables and plots
    trials: int  # finished (complete or pruned) trials the study should end with
    workers: int = 1
    isolate: bool = False
    seed: int = 0  # the sampler's; each worker and each resume gets its own stream from it
    max_failures: Optional[int] = None  # stop once the study holds this many failed trials (default: trials)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "SweepSettings":
        data = json.loads(text)
        for key in ("spec_path", "conf_dir", "sweep_dir"):
            data[key] = Path(data[key])
        return cls(**data)


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=requeue)  # fmt: skip


def run_sweep(settings: SweepSettings) -> optuna.Study:
    """Open (or continue) the study, run `workers` processes on it, return it when N trials finished."""
    spec = load_spec(settings.spec_path)
    settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    open_study(settings, spec, make_storage(settings.storage_url))  # created once, before others join
    children = [
        subprocess.Popen([sys.executable, "-m", "peftlab.sweep.runner", settings.to_json(), str(index)])
        for index in range(1, settings.workers)
    ]
    try:
        study = work(settings, spec, worker_index=0)
    finally:
        codes = [child.wait() for child in children]
    failed = [f"worker {i} exited with code {code}" for i, code in enumerate(codes, start=1) if code != 0]
    if failed:
        raise SweepError("; ".join(failed))
    return study


def open_study(settings: SweepSettings, spec: SweepSpec, storage, seed: Optional[int] = None) -> optuna.Study:
    """Create or load the study; a study started from another search or other overrides is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=settings.study_name, storage=storage, direction=spec.goal, load_if_exists=True,
        sampler=spec.sampler(settings.seed if seed is None else seed), pruner=spec.pruner(),
    )  # fmt: skip
    stamp = {"search": spec.fingerprint, "overrides": settings.base_overrides}
    stored = study.user_attrs.get(SWEEP_ATTR)
    if stored is None:
        study.set_user_attr(SWEEP_ATTR, stamp)
    elif stored != stamp:
        what = "overrides " + " ".join(stored["overrides"]) if stored["search"] == stamp["search"] else "another search (method, metric, parameters)"
        raise ConfigError(
            f"{settings.spec_path}: study {settings.study_name} in {settings.storage_url} was started with {what}; "
            "rerun that command to continue it, or pass --study NAME for a new study"
        )
    return study


def work(settings: SweepSettings, spec: SweepSpec, worker_index: int) -> optuna.Study:
    """One worker's loop; returns when the study holds N finished trials."""
    silence_known_warnings()  # Optuna's heartbeat notice: this loop asks, tells and beats itself
    storage = make_storage(settings.storage_url)
    known = len(open_study(settings, spec, storage).get_trials(deepcopy=False))
    # A seed of its own per worker and per resume: the same stream again would repeat the same trials.
    # Not for a grid: its cells are numbered in a seeded shuffle that every worker must share.
    seed = settings.seed if spec.method == "grid" else settings.seed + 1000 * worker_index + known
    study = open_study(settings, spec, storage, seed=seed)
    max_failures = settings.max_failures or settings.trials
    me = _this_worker()
    while True:
        with study_lock(settings.storage_url, settings.study_name):
            fail_dead_trials(study, storage)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)  # WAITING ones (requeued) are `ask`ed first
            failed = sum(t.state == TrialState.FAIL for t in trials)
            if finished >= settings.trials:
                return study
            if failed >= max_failures:
                last = [t for t in trials if t.state == TrialState.FAIL][-1].user_attrs.get(ERROR_ATTR, "no error recorded")
                raise SweepError(
                    f"study {settings.study_name} has {failed} failed trials, its limit (--max-failures) is {max_failures}; "
                    f"the last one: {last}; see trials.md for all of them"
                )
            trial = study.ask() if finished + running < settings.trials else None
            if trial is not None:
                trial.set_user_attr(WORKER_ATTR, me)
                storage.record_heartbeat(trial._trial_id)
                values = {p.key: p.sample(trial) for p in spec.searched}  # in the lock: grid cells are not taken twice
        if trial is None:
            time.sleep(POLL_S)  # others' trials are running: wait for them to finish, or to die and need a rerun
            continue
        _run_one(settings, spec, study, storage, trial, values)


def _run_one(settings: SweepSettings, spec: SweepSpec, study: optuna.Study, storage, trial: optuna.trial.Trial, values: dict) -> None:
    run_dir = settings.sweep_dir / f"trial-{trial.number:04d}"
    overrides = settings.base_overrides + spec.overrides(values)
    if not any(o.startswith("logger.group=") for o in overrides):
        overrides.append(f"logger.group={settings.study_name}")  # the W&B runs of one sweep, side by side
    trial.set_user_attr("values", values)
    trial.set_user_attr("overrides", spec.overrides(values))
    trial.set_user_attr("run_dir", str(run_dir))
    started = time.time()
    with heartbeat(storage, trial._trial_id):
        if settings.isolate:
            state = run_trial_isolated(study, trial, settings.storage_url, settings.spec_path, settings.conf_dir, overrides, run_dir, spec.metric)
        else:
            state = run_trial(study, trial, settings.conf_dir, overrides, run_dir, spec.metric)
    frozen = storage.get_trial(trial._trial_id)
    outcome = f"{spec.metric}={frozen.value:.4f}" if frozen.value is not None else frozen.user_attrs.get(ERROR_ATTR, "")
    print(f"trial {trial.number} {state.name.lower()} in {time.time() - started:.1f}s: {' '.join(spec.overrides(values))} -> {outcome}", flush=True)


def fail_dead_trials(study: optuna.Study, storage) -> None:
    """RUNNING trials whose worker process is gone become FAIL (so they are neither lost nor counted)
    and are queued again with the same parameters: a killed trial says nothing about them."""
    here = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker and worker["host"] == here and not _alive(worker):
            try:
                storage.set_trial_user_attr(t._trial_id, ERROR_ATTR, f"worker process {worker['pid']} died mid-trial (killed?)")
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except Exception:  # it finished after all, just now
                continue
            requeue(study, t)
    with warnings.catch_warnings():  # Optuna expects heartbeats only under study.optimize; ours beat themselves
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # other machines' dead workers, by heartbeat; calls requeue


def requeue(study: optuna.Study, dead: optuna.trial.FrozenTrial) -> None:
    """A WAITING copy of a dead trial (the next `ask` takes it), once: like Optuna's
    RetryFailedTrialCallback, without carrying the dead trial's worker and error over."""
    if dead.user_attrs.get("retry_of") is not None:
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, params=dead.params, distributions=dead.distributions,
            user_attrs={"retry_of": dead.number}, system_attrs=dict(dead.system_attrs),  # a grid cell keeps its id
        )
    )  # fmt: skip


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Mutual exclusion for count-then-ask across every worker of the study."""
    if url.startswith("sqlite:///") and "memory" not in url:
        import fcntl

        lock_path = Path(url.removeprefix("sqlite:///")).with_suffix(".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield
    elif url.startswith("postgresql"):
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        key = zlib.crc32(f"peftlab-sweep:{study_name}".encode())
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        finally:
            engine.dispose()
    else:
        yield


@contextlib.contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is not worth failing the trial over
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _process_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (tells a reused pid from the original);
    None when there is no /proc, "dead" for a zombie that exited but is not reaped yet."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return "dead" if fields[0] in ("Z", "X") else fields[19]


def _alive(worker: dict) -> bool:
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = _process_start(worker["pid"])
    return start != "dead" and (worker.get("start") is None or start == worker["start"])


if __name__ == "__main__":  # an extra worker started by run_sweep
    settings = SweepSettings.from_json(sys.argv[1])
    try:
        work(settings, load_spec(settings.spec_path), worker_index=int(sys.argv[2]))
    except PeftlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))  # a signal's status (RunInterrupted), else bad input's
