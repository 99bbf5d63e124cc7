"""Tasks, registered by name. Importing this package registers all of them."""

from peftlab.tasks import csv_files, sst2  # noqa: F401
from peftlab.tasks.base import TASKS, Task, TaskConfig

__all__ = ["TASKS", "Task", "TaskConfig"]
