"""GGUF checkpoints (llama.cpp's format), dequantised once into a cached transformers folder.

transformers reads a .gguf file with `from_pretrained(folder, gguf_file=...)`, dequantising every
tensor to float32: ~29 s for SmolLM2-135M on 2 cores, and the tokenizer alone takes ~7 s. Both are
written once, as a plain safetensors model folder and a tokenizer folder, under
`$PEFTLAB_CACHE/gguf/<file stem>-<digest>/` (default `~/.cache/peftlab`); later runs load those in
well under a second. The digest covers the file's size and its first and last MiB, so a changed
file gets a new folder. Each folder is built in a temporary sibling and renamed into place, so a
killed conversion never leaves a folder that looks finished.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from peftlab.cache import cache_root
from peftlab.config import GGUF_SUFFIX
from peftlab.errors import ModelError, first_line


def is_gguf(name_or_path: str | None) -> bool:
    return bool(name_or_path) and str(name_or_path).endswith(GGUF_SUFFIX)


def cache_folder(gguf_file: Path) -> Path:
    """Where a GGUF file's converted folders live (`tokenizer/`, `model/`)."""
    size = gguf_file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf_file.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return cache_root() / "gguf" / f"{gguf_file.stem}-{digest.hexdigest()[:12]}"


def tokenizer_folder(gguf_file: str) -> str:
    """A tokenizer folder converted from the GGUF file (its vocabulary, merges and chat template)."""
    from transformers import AutoTokenizer

    return _converted(Path(gguf_file), "tokenizer", lambda path: AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))


def model_folder(gguf_file: str) -> str:
    """A transformers model folder (config.json + model.safetensors, float32) with the GGUF file's
    dequantised weights; any AutoModelFor... of its architecture loads it."""
    from transformers import AutoModelForCausalLM

    def dequantised(path: Path):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        # The weights are plain float32 now; transformers still marks the model as GGUF-quantised
        # and refuses to save it, so drop that mark.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model

    return _converted(Path(gguf_file), "model", dequantised)


def _converted(gguf_file: Path, part: str, load) -> str:
    if not gguf_file.is_file():
        raise ModelError(f"{gguf_file}: no such GGUF file")
    target = cache_folder(gguf_file) / part
    if target.is_dir():  # renamed into place whole, so complete
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        converted = load(gguf_file)
    except (ImportError, ValueError, OSError, KeyError) as err:  # gguf missing, or an architecture transformers cannot read
        raise ModelError(f"{gguf_file}: transformers cannot read this GGUF file ({first_line(err)})") from None
    staging = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=target.parent))
    try:
        converted.save_pretrained(str(staging))
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep its folder
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
