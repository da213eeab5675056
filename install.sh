#!/usr/bin/env bash
# The one set-up command: .venv with rgt, its test tools, torch (CPU pin) and the agent's vendored deps.
# Idempotent: run it again after a pull. PYTHON=/path/to/python3.11+ picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "install.sh: $PY not found; set PYTHON=/path/to/python3.11 or newer" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "install.sh: rgt's controller needs Python 3.11+, but $PY is $("$PY" -V 2>&1); set PYTHON=..." >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch is pinned: an open range would pull several GB of CUDA wheels.
.venv/bin/python -m pip install -q 'torch==2.13.0' 'numpy==2.4.6'   # numpy: torch warns at import without it
.venv/bin/python -m pip install -q -e '.[test]' 'torch==2.13.0'
# The real-framework tests train with pinned Lightning and transformers in a venv of their own, so rgt's
# venv never holds a trainer's libraries (the laptop must verify without them). RGT_NO_TRAINER_VENV=1 skips it.
if [ -z "${RGT_NO_TRAINER_VENV:-}" ]; then
    if [ ! -x .venv-trainer/bin/python ]; then
        "$PY" -m venv .venv-trainer
    fi
    .venv-trainer/bin/python -m pip install -q -r tests/trainer-requirements.txt
fi
# The agent's pure-Python deps for the box (pinned for Python 3.8), copied into agent/_vendor.
.venv/bin/python -m rgt.controller.pyz vendor
echo "install.sh: ready. Run the tests with: .venv/bin/pytest"
