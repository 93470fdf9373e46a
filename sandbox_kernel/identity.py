"""Who this process is, asked afresh at each call (never cached: the launcher's processes
change uid across setuid and user namespaces, e.g. the relay of ``host_uid: subordinate``).

Standard library only: the launcher and the layers use it before confinement.
"""

from __future__ import annotations

import os


def is_root() -> bool:
    """This process's real uid is 0 (in the user namespace it is in now)."""
    return os.getuid() == 0


__all__ = ["is_root"]
