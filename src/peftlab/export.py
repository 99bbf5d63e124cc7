"""Export a finished run as a folder that others load without peftlab.

    python -m peftlab.export RUN_FOLDER --merge [--out DIR]   # a standalone transformers model
    python -m peftlab.export RUN_FOLDER [--out DIR]           # the adapter and the tokenizer

With --merge, DIR holds config.json, model.safetensors and the tokenizer, which
`AutoModelFor<head>.from_pretrained(DIR)` loads with neither peftlab nor peft installed. Each method
says how it merges (`Method.merged`):
- LoRA and its variants, AdaLoRA, VeRA, LoHa and LoKr are folded into W with peft's `merge_and_unload`;
- IA3 scales W's rows or columns;
- BitFit, full fine-tuning and the linear probe trained W itself, so the model is saved as it is;
- bottleneck adapters and prefix / prompt tuning are refused in one line, which says how to load
  their adapter instead.
Without --merge, DIR/adapter is the run's trained weights in the method's own format (peft's for
peft methods: `PeftModel.from_pretrained(base, DIR/adapter)`), and DIR/tokenizer its tokenizer.
DIR defaults to RUN/export-merged or RUN/export. It is written into a temporary folder and renamed,
so an export that exists is complete; an existing DIR is refused, never overwritten.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from peftlab.errors import ConfigError, PeftlabError
from peftlab.outputs import WEIGHTS_DIR, make_output_folder


def export_run(run_dir: Path, merge: bool, out: Optional[Path] = None) -> Path:
    """Write the export of `run_dir` to `out` (default inside the run folder); returns the folder."""
    from peftlab.reload import load_run, load_run_config

    cfg = load_run_config(run_dir)  # a folder that is not a finished run fails before torch loads
    out = out or run_dir / ("export-merged" if merge else "export")
    if out.exists():
        raise ConfigError(f"--out={out} exists; allowed: a new folder (an export is never overwritten)")
    make_output_folder(out.parent, "--out")

    from peftlab.methods import METHODS
    from peftlab.models import load_tokenizer

    method = METHODS.get(cfg.peft.method, "peft.method")(cfg.peft)
    tokenizer = load_tokenizer(cfg.model)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if merge:
            _, _, model = load_run(run_dir, cfg)
            model = method.merged(model)  # refuses methods that cannot merge, before anything is written
            model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
        else:
            shutil.copytree(run_dir / WEIGHTS_DIR, staging / "adapter")
            tokenizer.save_pretrained(str(staging / "tokenizer"))
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    from peftlab.cli import OneLineParser, fail

    parser = OneLineParser(prog="python -m peftlab.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (it holds metrics.json)")
    parser.add_argument("--merge", action="store_true", help="fold the method into the weights: a plain transformers model")
    parser.add_argument("--out", type=Path, default=None, help="the export folder (default RUN/export-merged or RUN/export)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        out = export_run(args.run, args.merge, args.out)
    except PeftlabError as err:
        fail(err)
    print(f"{out}: {'a merged transformers model' if args.merge else 'the adapter and tokenizer'} of {args.run}")


if __name__ == "__main__":
    main()
