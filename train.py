"""Train one PEFT method on one task and write a finished run folder.

    python train.py peft=lora rank=8                 # the default: MiniLM, SST-2, one CPU
    python train.py peft=adalora task=csv task.train_file=... trainer=gpu
    python train.py --cfg job                        # print the composed config

The config is composed and validated before torch loads (a bad key fails in under a second);
the recipe itself is `peftlab.recipe.train`.
"""

from pathlib import Path

from peftlab.cli import entrypoint

CONF_DIR = Path(__file__).parent / "conf"


@entrypoint(CONF_DIR)
def main(cfg, raw):
    from hydra.core.hydra_config import HydraConfig

    from peftlab.recipe import train  # heavy imports (torch, transformers, Lightning) start here

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run = train(cfg, raw, run_dir=run_dir)
    if run.record is not None:  # rank 0 only
        shown = run_dir.relative_to(Path.cwd()) if run_dir.is_relative_to(Path.cwd()) else run_dir
        print(run.record.summary_line(shown), flush=True)


if __name__ == "__main__":
    main()
