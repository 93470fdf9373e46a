"""Kernelspecs (one per tenant profile) and the child-process guard hook."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
import tempfile

from jupyter_client.kernelspec import KernelSpecManager

from . import resources
from .policy import list_profiles, resolve


def kernel_argv(profile: str, python: str | None = None) -> list[str]:
    """The launcher applies every layer, then execs the kernel's interpreter.

    ``-I`` keeps the launcher itself from reading user site-packages, PYTHONPATH or
    the working directory before it has confined anything; the kernel runs with
    ``-P`` (3.11+; ``-I`` on 3.10) so a ``sandbox_kernel`` directory in the working
    directory cannot replace the package.
    """
    python = python or sys.executable
    safe = "-P" if sys.version_info >= (3, 11) else "-I"
    return [python, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile,
            "--connection-file", "{connection_file}", "--",
            python, safe, "-m", "sandbox_kernel", "-f", "{connection_file}", "--profile", profile]


def kernel_spec(profile: str, display_name: str | None = None) -> dict:
    policy = resolve(profile)  # validates; a broken profile is never installed
    return {
        "argv": kernel_argv(profile),
        "display_name": display_name or f"Python 3 (sandbox: {profile})",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "sandbox_kernel": {"profile": profile, "description": policy.data.get("description", "")},
            "debugger": policy.network["mode"] == "full",
        },
    }


def install_hook() -> str:
    """Install (or refresh) sandbox_kernel_guard.pth in this environment's site-packages."""
    src, dst = resources.guard_hook_source(), resources.guard_hook_path()
    if src.resolve() != dst.resolve() and not (dst.exists() and filecmp.cmp(src, dst, shallow=False)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return str(dst)


def install(profile: str, *, name: str | None = None, display_name: str | None = None, user: bool = False,
            prefix: str | None = None) -> str:
    name = name or f"sandbox-{profile}"
    spec = kernel_spec(profile, display_name)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "kernel.json"), "w") as fh:
            json.dump(spec, fh, indent=1)
        for logo in resources.kernelspec_template_dir().glob("logo-*"):
            shutil.copy(logo, tmp)
        return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)


def shipped_profile_names() -> list[str]:
    shipped = resources.shipped_profiles_dir()
    return [n for n, p in list_profiles() if p.parent == shipped]
