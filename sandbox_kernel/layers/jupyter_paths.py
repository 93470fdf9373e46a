"""Jupyter's directories, as jupyter_core.paths computes them on Linux.

Written out with the standard library because the launcher runs before confinement and must not
import third-party code (jupyter_core, platformdirs) from a place the tenant may write.
"""

from __future__ import annotations

import os
import sys


def jupyter_data_dir(env) -> str:
    if env.get("JUPYTER_DATA_DIR"):
        return env["JUPYTER_DATA_DIR"]
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share"), "jupyter")


def jupyter_runtime_dir(env) -> str:
    return env.get("JUPYTER_RUNTIME_DIR") or os.path.join(jupyter_data_dir(env), "runtime")


def jupyter_path(env, *subdirs: str) -> list[str]:
    """Every directory jupyter_core.paths.jupyter_path may search (order does not matter here)."""
    paths = [p.rstrip(os.sep) for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    home = env.get("HOME") or os.path.expanduser("~")
    paths.append(jupyter_data_dir(env))
    paths.append(os.path.join(env.get("PYTHONUSERBASE") or os.path.join(home, ".local"), "share", "jupyter"))
    paths.append(os.path.join(sys.prefix, "share", "jupyter"))
    paths += ["/usr/local/share/jupyter", "/usr/share/jupyter"]
    return list(dict.fromkeys([os.path.join(p, *subdirs) for p in paths]))
