"""Tasks, registered by name. Importing this package imports every module in it, which registers
them all: a new task is one module here (and one YAML in conf/task/), nothing to list."""

import importlib
import pkgutil

from peftlab.tasks.base import TASKS, Task, TaskConfig

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "TaskConfig"]
