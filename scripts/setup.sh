#!/usr/bin/env bash
# Set-up on a fresh machine (idempotent): a virtual environment in .venv with the
# package, its test and benchmark extras and torch (a pinned CPU build where the
# machine offers one: a range would pull a multi-GB CUDA build), then one kernelspec
# per shipped profile installed into that environment, and the child-process guard hook.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q -e '.[test,bench,e2e]' 'torch==2.13.0' 2>&1 | grep -v -e 'is ignored' -e '^$' || true
python -c "import sandbox_kernel, torch, jupyter_kernel_test, nbclient, hypothesis" \
    || { echo "setup: installing the dependencies failed" >&2; exit 1; }
sandbox-kernel install --all --sys-prefix >/dev/null
./scripts/setup-e2e.sh   # Enterprise Gateway's own venv, Chromium, configurable-http-proxy
echo "setup: ready ($(python --version), torch $(python -c 'import torch; print(torch.__version__)'), kernelspecs: $(jupyter kernelspec list | grep -c sandbox-))"
