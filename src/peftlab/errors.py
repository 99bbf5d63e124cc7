"""Errors a user can fix. The command line prints them as one line, never as a traceback."""


class PeftlabError(Exception):
    """Base class: bad input that the user can correct."""


class ConfigError(PeftlabError):
    """A config value, key or option is not allowed."""


class DataError(PeftlabError):
    """Data files are missing, empty or inconsistent with the task config."""


class ModelError(PeftlabError):
    """A model could not be found or loaded."""


class TrainingError(PeftlabError):
    """Training went wrong in a way a setting can fix (the loss diverged, say)."""


class RunFolderError(PeftlabError):
    """The run folder holds a finished run, or another run is writing into it."""


class RunInterrupted(PeftlabError):
    """A signal stopped the run before it finished. The command exits with the shell's code for
    that signal (128 + its number: 143 for SIGTERM, 130 for Ctrl-C), so a scheduler sees a failed job."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """Raise the standard one-line range error unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value} is out of range; {rule}")


def require_choice(key: str, value: object, allowed: tuple) -> None:
    """Raise the standard one-line error unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{key}={value} is not an option; allowed: {', '.join(map(str, allowed))}")


def first_line(err: BaseException) -> str:
    """The first line of a library's message, for wrapping it in one of ours."""
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__
