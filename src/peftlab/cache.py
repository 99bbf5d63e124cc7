"""Where peftlab keeps what it derives once and reuses across runs: `$PEFTLAB_CACHE`, by default
`~/.cache/peftlab` (converted GGUF checkpoints under `gguf/`, the compiled dropout kernel under
`native/`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab").expanduser()
