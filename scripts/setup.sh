#!/usr/bin/env bash
# Set-up on a fresh machine (idempotent): a virtual environment in .venv with the
# package, its test and benchmark extras and torch, then one kernelspec per shipped
# profile installed into that environment, and the child-process guard hook.
#
# torch is pinned (TORCH_SPEC, default torch==2.13.0: a range would pull whatever is
# newest). Which build: on Linux x86_64, PyPI has only the CUDA build (a 527 MB wheel
# plus 2 to 3 GB of nvidia-*, cuda-* and triton wheels). So where this machine has no
# NVIDIA GPU, the CPU build (192 MB, no nvidia-* packages) is taken from TORCH_INDEX_URL:
#   TORCH_INDEX_URL unset   PyTorch's CPU index, https://download.pytorch.org/whl/cpu, if it
#                           answers (and no GPU is present); otherwise pip's own indexes
#   TORCH_INDEX_URL=URL     that index (a CPU index or a mirror of one), as an extra index
#   TORCH_INDEX_URL=none    pip's own indexes and find-links only
# Before downloading, set-up says which torch file pip will take; where that is the CUDA
# build on a machine without a GPU, it says what that costs and how to avoid it.
# SANDBOX_KERNEL_CONSTRAINTS=FILE installs with pip's `-c FILE` (.ci/run: .ci/constraints-lowest.txt,
# the lowest versions pyproject.toml allows); unset, pip takes the newest it allows.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
constraints=()
[ -z "${SANDBOX_KERNEL_CONSTRAINTS:-}" ] || constraints=(-c "$SANDBOX_KERNEL_CONSTRAINTS")
python -m pip install -q -e '.[test,bench,e2e]' ${constraints[@]+"${constraints[@]}"} 2>&1 \
    | grep -v -e 'is ignored' -e '^$' || true
if [ -n "${SANDBOX_KERNEL_CONSTRAINTS:-}" ]; then  # (pip's errors are filtered above: check what it installed)
    python - "$SANDBOX_KERNEL_CONSTRAINTS" <<'PY' || exit 1
import importlib.metadata as m, sys
from packaging.requirements import Requirement
pins = [Requirement(l.split("#")[0].strip()) for l in open(sys.argv[1]) if l.split("#")[0].strip()]
bad = [f"{r.name} {m.version(r.name)} (wanted {r.specifier})" for r in pins
       if not r.specifier.contains(m.version(r.name), prereleases=True)]
print(f"setup: {sys.argv[1]}: " + ("NOT met: " + "; ".join(bad) if bad else ", ".join(f"{r.name}{r.specifier}" for r in pins)),
      file=sys.stderr if bad else sys.stdout)
sys.exit(1 if bad else 0)
PY
fi

has_nvidia_gpu() { [ -e /dev/nvidiactl ] || command -v nvidia-smi >/dev/null 2>&1; }
answers() {  # does this index answer within 10 s (no proxy guessing, no retries)
    python - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
except Exception:
    sys.exit(1)
PY
}
torch_index="${TORCH_INDEX_URL-auto}"
if [ "$torch_index" = auto ]; then
    torch_index=none
    if ! has_nvidia_gpu && answers "$TORCH_CPU_INDEX"; then
        torch_index="$TORCH_CPU_INDEX"
    fi
fi
torch_args=("$TORCH_SPEC")
[ "$torch_index" = none ] || torch_args+=(--extra-index-url "$torch_index")
if ! python -c "import sys, importlib.metadata as m; from packaging.requirements import Requirement as R; \
sys.exit(0 if R(sys.argv[1]).specifier.contains(m.version('torch'), prereleases=True) else 1)" "$TORCH_SPEC" 2>/dev/null; then
    # What pip will take (metadata only, nothing downloaded yet).
    torch_file=$(python -m pip install -q --dry-run --ignore-installed --no-deps --report - "${torch_args[@]}" 2>/dev/null \
        | python -c 'import json, sys, urllib.parse as u; r = json.load(sys.stdin)
print(u.unquote(r["install"][0]["download_info"]["url"].rsplit("/", 1)[-1]))' \
        2>/dev/null || echo "?")
    echo "setup: torch: $torch_file$([ "$torch_index" = none ] || echo " (extra index $torch_index)")"
    if ! has_nvidia_gpu && [[ "$torch_file" != *+cpu* ]] && [[ "$(uname -sm)" == "Linux x86_64" ]]; then
        echo "setup: no NVIDIA GPU here, but no CPU build of torch is reachable: this is PyPI's CUDA build," \
             "527 MB plus 2 to 3 GB of nvidia-*, cuda-* and triton wheels. To avoid it, set TORCH_INDEX_URL" \
             "to a CPU index or a mirror of $TORCH_CPU_INDEX (or put a +cpu wheel on pip's find-links)." >&2
    fi
    python -m pip install -q "${torch_args[@]}" 2>&1 | grep -v -e 'is ignored' -e '^$' || true
fi
python -c "import sandbox_kernel, torch, jupyter_kernel_test, nbclient, papermill, hypothesis" \
    || { echo "setup: installing the dependencies failed" >&2; exit 1; }
# user_namespace.host_uid: subordinate takes each root kernel's host uid from root's /etc/subuid
# range: one above useradd's SUB_UID_MAX (600100000), so that no account's range ever overlaps it.
if [ "$(id -u)" = 0 ] && ! grep -q '^root:' /etc/subuid 2>/dev/null; then
    usermod --add-subuids 1879048192-1879113727 --add-subgids 1879048192-1879113727 root
fi
sandbox-kernel install --all --sys-prefix >/dev/null
./scripts/setup-e2e.sh   # Enterprise Gateway's own venv, Chromium, configurable-http-proxy
echo "setup: ready ($(python --version), torch $(python -c 'import torch; print(torch.__version__, "(CUDA " + torch.version.cuda + " build)" if torch.version.cuda else "(CPU build)")'), kernelspecs: $(jupyter kernelspec list | grep -c sandbox-))"
