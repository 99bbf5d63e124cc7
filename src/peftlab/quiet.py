"""Known library notices that are not news to a peftlab user, silenced one message at a time.

Each filter names the exact message it hides and why, so every other warning still shows; a user
who passes `python -W ...` gets every warning back.
"""

from __future__ import annotations

import logging
import sys
import warnings

KNOWN_WARNINGS = (
    # (message regex, category): why it is not the user's to fix
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),  # peft reads transformers' old property name
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # Lightning's pytree helper on new torch
    # peft 0.21 hands prompt learning's cache to the model under its old name (methods/peft_library.py)
    (r"`past_key_values` is deprecated and will be removed in version", FutureWarning),
    (r".*does not have many workers.*", UserWarning),  # in-memory token ids: worker processes do not pay on CPU
    # AdaLoRA saves its rank pattern under its own `.lora_E` names, which peft's generic check on
    # reload does not recognise; the ranks are restored all the same (reloaded scores are bit-identical)
    (r"The following rank_pattern keys did not match any targeted module and were ignored: \['[^']*\.lora_E'", RuntimeWarning),
    # the validation scores are gathered over every rank by the task's metrics before they are logged
    (r"It is recommended to use `self\.log\('val/", UserWarning),
    # sweep.runner asks and tells outside Study.optimize and records each trial's heartbeat itself
    (r"Heartbeat of storage is supposed to be used with Study\.optimize", UserWarning),
)
# Expected notices that libraries log rather than warn: the fresh classifier head is the point of
# fine-tuning, Lightning's tips and the one-off font cache of matplotlib are not.
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "matplotlib")


def silence_known_warnings() -> None:
    if sys.warnoptions:  # the user asked for warnings explicitly
        return
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_libraries() -> None:
    """Called once a run starts: the known warnings, transformers' notices and its load bars."""
    import transformers

    silence_known_warnings()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights: 103/103" for a load that takes a blink
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
