"""What a pooled kernel and the pool that started it agree on (issue 18; docs/pool.md).

Kept apart from ``sandbox_kernel.pool`` (the provisioner, which imports jupyter_client's
provisioning machinery) so that the kernel imports only these few names.

A kernel started by the pool gets ``SANDBOX_KERNEL_POOL=<pool id>`` in its environment; the
kernel takes it out of ``os.environ`` at its start and then answers exactly one
``sandbox_handoff_request`` on its control channel (signed with the connection file's key,
which only the pool holds until the hand-off): the Jupyter kernel id and the few
variables that are known only when a notebook asks for a kernel. A kernel not started by
the pool, or one already handed out, refuses the request.

Enforcement: soft. The hand-off changes only the kernel's environment variables and
``__session__`` (what user code can change itself); every hard rule was fixed at the
kernel's start, exactly as for a cold start (the pool is keyed by everything they depend on).
"""

from __future__ import annotations

POOL_ENV = "SANDBOX_KERNEL_POOL"  # in a pre-started kernel's start environment: its pool id
POOLED_ENV = "SANDBOX_KERNEL_POOLED"  # set at hand-off: the pool id the kernel was started under
REQUEST = "sandbox_handoff_request"
REPLY = "sandbox_handoff_reply"
DEFAULT_HANDOFF_ENV = ("JPY_SESSION_NAME",)

# Variables read at a start (by the interpreter, the launcher, the layers, Jupyter's path
# logic, the dynamic loader, ...): changing them after the start would not do what a cold
# start with them does, so they can never be applied at hand-off. A pool keys its kernels
# by them instead (a different value means a different pool, or a cold start).
_NEVER_PREFIXES = ("PYTHON", "LD_", "SANDBOX_KERNEL", "JUPYTER", "JPY_PARENT", "XDG_", "CUDA", "NVIDIA", "ROCR",
                   "HIP_", "GPU_", "TPU_", "JAX_", "XLA_", "TORCH", "OMP_", "MKL_", "OPENBLAS", "GLIBC", "MALLOC",
                   "SSL_", "REQUESTS_", "CURL_", "GIT_", "PIP_", "CONDA", "VIRTUAL_ENV", "KMP_")
_NEVER = frozenset({"HOME", "PATH", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ",
                    "RES_OPTIONS", "LOCALDOMAIN", "HOSTALIASES", "PYDEVD_DISABLE_FILE_VALIDATION", "MPLCONFIGDIR",
                    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})


def handoff_refusal(name: str) -> str | None:
    """Why `name` cannot be applied at hand-off (None: it can)."""
    if not name or "=" in name or "\0" in name:
        return "not a variable name"
    if name in _NEVER or name.startswith("LC_") or name.upper().startswith(_NEVER_PREFIXES):
        return "it is read at a kernel's start (by the interpreter, the launcher or a library)"
    return None
