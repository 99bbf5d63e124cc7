"""Where the numbers come from: the git commit of the code and the DVC hash of the data."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# What `dvc repro` / `dvc exp run` rewrite themselves; their changes do not make the code "uncommitted".
PIPELINE_WRITTEN = ("dvc.lock", "params.yaml", "pipeline", "results")


@dataclass(frozen=True)
class Provenance:
    git_commit: Optional[str]  # short hash, "+dirty" when tracked code or configs have uncommitted changes
    data_dvc_md5: Optional[str]  # the hash data.dvc records for data/


def provenance(root: Path = Path(".")) -> Provenance:
    return Provenance(git_commit(root), data_dvc_md5(root / "data.dvc"))


def git_commit(root: Path) -> Optional[str]:
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=10", "HEAD")
    if commit is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in PIPELINE_WRITTEN))
    return commit + ("+dirty" if changed else "")


def data_dvc_md5(dvc_file: Path) -> Optional[str]:
    if not dvc_file.is_file():
        return None
    import yaml

    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    return md5.removesuffix(".dir") if md5 else None
