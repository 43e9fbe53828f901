#!/usr/bin/env bash
# Make .venv with nextword and its dependencies. Safe to run again: it only installs what is missing.
#
# PyTorch is installed first, in the build that fits the machine (scripts/install_torch.py): a wheel already on
# disk, else the CUDA build only where an NVIDIA GPU is, else the CPU build, so that the dependency on torch
# below finds it installed and downloads no CUDA packages. A machine that already has torch (a GPU box) keeps its
# own when run as `NEXTWORD_PYTHON=python3 ./setup.sh`.
set -euo pipefail
cd "$(dirname "$0")"
python=${NEXTWORD_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv --system-site-packages .venv 2>/dev/null || "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "$python" scripts/install_torch.py .venv/bin/python
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
