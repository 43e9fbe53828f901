#!/usr/bin/env bash
# Make .venv with nextword and its dependencies. Safe to run again: it only installs what is missing.
#
# PyTorch: a plain `pip install torch` on a machine without one pulls several GB of CUDA packages, so a CPU build
# is installed first: the local wheel cache's build where pip finds one, else PyTorch's CPU index. A machine
# that already has torch (a GPU box) keeps its own when run as `NEXTWORD_PYTHON=python3 ./setup.sh`.
set -euo pipefail
cd "$(dirname "$0")"
python=${NEXTWORD_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv --system-site-packages .venv 2>/dev/null || "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing PyTorch (CPU build)"
    "${pip[@]}" install "torch==2.13.0" 2>/dev/null \
        || "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
fi
stamp=.venv/.nextword-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing nextword and its dependencies"
    if ! "${pip[@]}" install -e ".[test]" 2>.venv/pip-errors.log; then
        cat .venv/pip-errors.log >&2
        exit 1
    fi
    touch "$stamp"
fi
