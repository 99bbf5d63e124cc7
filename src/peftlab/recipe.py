"""The training recipe, top to bottom: data -> model -> PEFT method -> fit -> evaluate -> save.

`train.py` calls `train` under Hydra; tests call it directly with a composed config.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from peftlab import __version__
from peftlab.budget import batches_per_epoch, check_val_check_interval, check_validation_shares, planned_steps
from peftlab.checkpoint import TrainableCheckpoint
from peftlab.config import Config, TrainerConfig, require_cpu_processes
from peftlab.data import TaskDataModule
from peftlab.latency import measure as measure_latency
from peftlab.errors import ConfigError, RunInterrupted, first_line
from peftlab.loggers import build_loggers, finish_loggers
from peftlab.methods import METHODS
from peftlab.allocator import keep_freed_memory
from peftlab.architectures import architecture_of
from peftlab.models import check_model_fits, count_parameters, load_model, load_tokenizer, model_source, tell_task_the_model
from peftlab.module import PeftModule
from peftlab.nn.attention import use_fast_dropout_attention
from peftlab.nn.dropout import TORCH, mask_generator, use_fast_dropout
from peftlab.nn.fused_lora import use_fused_lora
from peftlab.outputs import METRICS_FILE, WEIGHTS_DIR, claim_run_folder, folder_bytes, start_run_folder, write_predictions
from peftlab.sharding import build_strategy, gathered_state
from peftlab.resume import checkpoint_file
from peftlab.record import Memory, MethodRecord, ModelIdentity, Params, RunRecord, Scores, TrainStats, Weights
from peftlab.progress import PlannedStepsProgressBar
from peftlab.quiet import quiet_libraries
from peftlab.tasks import TASKS
from peftlab.tasks.base import LOSS

LOG_EVERY_N_STEPS = 10
# Set by the launchers Lightning reads a multi-node run's ranks from (its own, torchrun, SLURM, LSF, MPI).
MULTI_NODE_ENV = {"NODE_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"}


@dataclass
class TrainedRun:
    record: Optional[RunRecord]  # what metrics.json holds (None on ranks other than 0)
    model: Any  # the trained model, in memory

    @property
    def metrics(self) -> dict[str, Any]:
        """The record as metrics.json holds it."""
        return self.record.to_json() if self.record is not None else {}


def train(cfg: Config, raw: DictConfig, run_dir: Path, callbacks: Sequence[Callback] = ()) -> TrainedRun:
    """One run into `run_dir`; `callbacks` are extra Lightning callbacks (a sweep's pruning, say)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    quiet_libraries()
    keep_freed_memory()  # each step's buffers reused, not faulted in again page by page
    check_devices(cfg.trainer)
    resume_from = checkpoint_to_resume(cfg, run_dir)
    if cfg.trainer.checkpoint_every:
        callbacks = [*callbacks, TrainableCheckpoint(run_dir, cfg.trainer.checkpoint_every)]
    trainer = build_trainer(cfg, run_dir, OmegaConf.to_container(raw, resolve=True), list(callbacks))

    # Rank 0 owns the folder (Lightning's DDP ranks rerun this command and share it).
    with claim_run_folder(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        # Data first: a missing file or a bad label fails before the model loads.
        task = TASKS.get(cfg.task.task, "task.task")(cfg.task, seed=cfg.seed)
        method = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft)
        with status(cfg, f"Reading and tokenizing {cfg.task.name}"):
            tokenizer = load_tokenizer(cfg.model)
            tell_task_the_model(cfg.model, task)  # a generation task encodes for a decoder or an encoder-decoder
            method.check_task(task)
            data = TaskDataModule(task, tokenizer, cfg.trainer.batch_size, cfg.trainer.eval_batch_size, cfg.trainer.num_workers,
                                  cfg.seed, pin_memory=cfg.trainer.accelerator in ("gpu", "cuda"))  # fmt: skip
            data.setup("fit")
        n_train = len(data.splits["train"])
        check_val_check_interval(cfg.trainer, n_train, trainer.world_size)
        check_validation_shares(cfg.task.name, len(data.splits["validation"]), trainer.world_size)
        total_steps = planned_steps(cfg.trainer, n_train, trainer.world_size) if method.trains else 0
        # An epoch shorter than the logging interval would log no training loss (and Lightning warns).
        trainer.log_every_n_steps = min(LOG_EVERY_N_STEPS, batches_per_epoch(n_train, cfg.trainer.batch_size, trainer.world_size))

        with status(cfg, f"Loading {cfg.model.name} and adding {cfg.peft.name}"):
            model = load_model(cfg.model, task, **method.load_options())
            if cfg.trainer.gradient_checkpointing:
                enable_gradient_checkpointing(model, cfg.model.name)
            arch = architecture_of(model, cfg.model.targets)  # what is adapted, what is the head
            if model.config.pad_token_id is None:  # a decoder's score head finds the last real token by it
                model.config.pad_token_id = tokenizer.pad_token_id
            method.check(model, arch)  # the method against the model: its layers' sizes and names, its head
            check_model_fits(model, tokenizer, task, arch.profile, method.virtual_tokens())  # vocabulary, positions, eos
            model = method.apply(model, arch, total_steps=total_steps)
            masks = TORCH  # what a CPU run's dropout masks are drawn with, for the record
            if cfg.trainer.fast_dropout:
                use_fast_dropout(model)  # the model's and the method's: CPU masks without bernoulli_'s serial loop
                use_fast_dropout_attention(model)  # and the attention probabilities' (sdpa models)
                if trainer.strategy.root_device.type == "cpu":
                    masks = mask_generator()  # builds peftlab's mask kernel now, not in the timed steps
            if cfg.trainer.fused_lora:
                use_fused_lora(model)  # after the dropout swap: a fused layer draws its mask as its dropout would
            settings = method.settings(model, arch)  # what took effect, for the record
        model.train()  # from_pretrained returns eval mode (no dropout), and Lightning keeps the mode it finds
        params = count_parameters(model)
        module = PeftModule(model, method, task, cfg.lr, cfg.trainer, total_steps, arch.profile.no_decay)

        if trainer.is_global_zero:
            start_run_folder(run_dir, raw)
        with finish_loggers(trainer) as summary, stopped_by_signal(trainer, total_steps, run_dir):
            reset_peak_memory()
            start = time.perf_counter()
            if method.trains:  # zero-shot: the model is scored as loaded
                # Our own checkpoint, in this run's folder: loading it whole (RNG states) is safe.
                trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=False if resume_from else None)
            train_time = time.perf_counter() - start + module.train_time_before
            samples = int(trainer.strategy.reduce(torch.as_tensor(module.train_samples, dtype=torch.float64), reduce_op="sum"))
            tokens = int(trainer.strategy.reduce(torch.as_tensor(module.train_tokens, dtype=torch.float64), reduce_op="sum"))

            # Score the final weights, unless the last validation already did.
            if module.last_eval is None or module.last_eval[0] != trainer.global_step:
                trainer.validate(module, datamodule=data, verbose=False)
            state = gathered_state(trainer, module.model)  # sharded runs: the whole state on rank 0, every rank helping
            if not trainer.is_global_zero:
                return TrainedRun(None, module.model)

            method.save(module.model, run_dir / WEIGHTS_DIR, state)
            latency = None
            # Batch-1 inference, with the method's modules and merged (not on a sharded model: rank 0 holds a slice).
            if cfg.trainer.latency_examples and state is None:
                latency = measure_latency(module.model, method, task, data.splits["validation"], data.collate,
                                          cfg.trainer.latency_examples, trainer.precision_plugin)  # fmt: skip
            if module.last_predictions is not None:  # a generation task's answers, for a reader
                write_predictions(run_dir, "validation", module.last_predictions)
            record = RunRecord(
                task=cfg.task.name,
                model=ModelIdentity(cfg.model.name, arch.model_type, model_source(cfg.model)),
                method=MethodRecord(cfg.peft.name, cfg.peft.label(), settings),
                seed=cfg.seed,
                lr=cfg.lr,
                main_metric=task.main_metric,
                metric_info={m.name: m for m in (*task.metric_info, LOSS)},
                eval=Scores("validation", data.counts["validation"], module.last_eval[1]),
                params=Params(**params),
                train=TrainStats(
                    time_s=round(train_time, 3),
                    samples_per_s=round(samples / train_time, 2) if samples else 0.0,
                    steps=trainer.global_step,
                    planned_steps=total_steps,
                    samples=samples,
                    devices=trainer.world_size,
                    precision=str(trainer.precision),  # what ran: Lightning runs 16-mixed as bf16-mixed on CPU
                    dropout_masks=masks,
                    tokens=tokens,
                    tokens_per_s=round(tokens / train_time, 1) if tokens else 0.0,
                ),
                memory=Memory(**peak_memory(trainer.strategy.root_device.type)),
                weights=Weights(folder_bytes(run_dir / WEIGHTS_DIR), WEIGHTS_DIR),
                versions=_versions(),
                latency=latency,
            )
            summary.update(record.to_json())  # the loggers' run summary (W&B) holds the same
            record.write(run_dir)  # last: its presence marks a finished run
            shutil.rmtree(checkpoint_file(run_dir).parent, ignore_errors=True)  # finished: nothing to resume
    return TrainedRun(record, module.model)


@contextlib.contextmanager
def stopped_by_signal(trainer: L.Trainer, total_steps: int, run_dir: Path):
    """Lightning ends fit and validate on SIGTERM with a SystemExit that has no code (exit status 0,
    which a shell or a scheduler reads as success) and on Ctrl-C with exit status 1, both silently.
    Here either is one line that says the run did not finish and how to go on, and the shell's
    status for the signal."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SystemExit as stop:
        if isinstance(stop, SIGTERMException):
            name, number = "SIGTERM", signal.SIGTERM
        elif isinstance(stop.__context__, KeyboardInterrupt):
            name, number = "Ctrl-C (SIGINT)", signal.SIGINT
        else:
            raise
        if checkpoint_file(run_dir).is_file():
            then = f"continue it with resume={run_dir}"
        else:
            then = "train it again (trainer.checkpoint_every=N keeps a checkpoint to resume from)"
        raise RunInterrupted(
            f"stopped by {name} at step {trainer.global_step} of {total_steps}: the run did not finish "
            f"(no {METRICS_FILE} in {run_dir}); {then}", 128 + number,
        ) from None


def checkpoint_to_resume(cfg: Config, run_dir: Path) -> Optional[Path]:
    """The checkpoint a `resume` run continues from (train.py has already moved it into that run's folder)."""
    if cfg.resume is False:
        return None
    if isinstance(cfg.resume, str) and Path(cfg.resume).resolve() != run_dir.resolve():
        raise ConfigError(f"resume={cfg.resume}: a resumed run continues in its own folder, not in {run_dir}")
    path = checkpoint_file(run_dir)
    if not path.is_file():
        raise ConfigError(f"resume: {run_dir} holds no checkpoint ({path.relative_to(run_dir)}); a run writes one only "
                          "with trainer.checkpoint_every=N; allowed: resume=false")  # fmt: skip
    return path


def enable_gradient_checkpointing(model, name: str) -> None:
    """transformers' activation checkpointing, in its non-reentrant form: it needs no input that
    requires a gradient (the frozen embeddings of a PEFT run give none) and replays dropout's RNG,
    so a step computes the same gradients as without it, with less memory."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"trainer.gradient_checkpointing=true: {name} ({type(model).__name__}) does not support it in transformers; "
                          "allowed: trainer.gradient_checkpointing=false")  # fmt: skip
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name for it
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_devices(t: TrainerConfig) -> None:
    """A GPU asked for on a machine without one: one line, instead of Lightning's stack of frames."""
    if t.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ConfigError(
                f"trainer.accelerator={t.accelerator}, but torch {torch.__version__} ({build}) sees no CUDA GPU "
                "on this machine; allowed here: trainer=cpu or trainer=ddp (CPU processes)"
            )
        if isinstance(t.devices, int) and t.devices > torch.cuda.device_count():
            raise ConfigError(
                f"trainer.devices={t.devices} is out of range; this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    if t.accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available():
        require_cpu_processes(t.devices)  # auto is the CPU here: the devices are processes
    if t.accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps, but this machine has no Apple GPU; allowed here: trainer=cpu")
    if t.num_nodes > 1 and not MULTI_NODE_ENV.intersection(os.environ):
        # Otherwise rank 0 waits forever for nodes that were never started.
        raise ConfigError(
            f"trainer.num_nodes={t.num_nodes}, but this process was not started as one node of several; run the same "
            "command on every node with MASTER_ADDR, MASTER_PORT and NODE_RANK set, or start it with torchrun or "
            "SLURM's srun; allowed on one machine: trainer.num_nodes=1"
        )


def build_trainer(cfg: Config, run_dir: Path, resolved: dict, callbacks: list[Callback]) -> L.Trainer:
    t = cfg.trainer
    try:
        trainer = L.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=build_strategy(t.strategy),
            num_nodes=t.num_nodes,
            precision=t.precision,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            val_check_interval=t.val_check_interval,
            accumulate_grad_batches=t.accumulate_grad_batches,
            gradient_clip_val=t.gradient_clip_val,
            deterministic=t.deterministic,
            logger=build_loggers(cfg, run_dir, resolved),
            # On a GPU each refresh of the bar reads the loss back, so it refreshes once per logged step.
            callbacks=callbacks + ([PlannedStepsProgressBar(refresh_rate=1 if t.accelerator == "cpu" else LOG_EVERY_N_STEPS)]
                                   if t.progress_bar else []),  # fmt: skip
            enable_progress_bar=t.progress_bar,
            enable_checkpointing=False,  # the run folder keeps the trained weights in the method's own format
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # data.py builds samplers that score every example once
            default_root_dir=str(run_dir),
            log_every_n_steps=LOG_EVERY_N_STEPS,
        )
    except (MisconfigurationException, ValueError) as err:  # Lightning's own refusal of a trainer setting
        raise ConfigError(f"trainer: {first_line(err)}") from None
    # Deterministic algorithms (which Lightning has just switched on) also fill every new tensor with
    # NaN, a guard against kernels that read memory they never wrote. torch's kernels do not, so the
    # results are the same without it; the fills were 12% of a profiled CPU LoRA step's time.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def status(cfg: Config, message: str):
    """A spinner for the slow steps before Lightning's progress bar takes over."""
    if not cfg.trainer.progress_bar:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def reset_peak_memory() -> None:
    """Start a fresh high-water mark, so runs in one process (a sweep's trials) each get their own."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak resident set


def peak_memory(device_type: str) -> dict[str, Any]:
    """The high-water mark since `reset_peak_memory`: CUDA's allocated bytes, or the peak resident set."""
    if device_type == "cuda":
        return {"peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "kind": "cuda_max_allocated"}
    status_file = Path("/proc/self/status")
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):  # peak resident set since the last reset, in kB
                return {"peak_mb": round(int(line.split()[1]) / 1024, 1), "kind": "cpu_peak_rss"}
    return {"peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "kind": "cpu_max_rss"}


def _versions() -> dict[str, str]:
    import lightning
    import peft
    import transformers

    return {
        "peftlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "lightning": lightning.__version__,
    }
