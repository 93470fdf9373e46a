"""sandbox_kernel.identity.is_root is asked afresh at each call: a process that leaves uid 0
(as the launcher's relay does for user_namespace.host_uid: subordinate) is no longer root."""

from __future__ import annotations

import os

import pytest

from sandbox_kernel.identity import is_root


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to change uid")
def test_is_root_follows_a_uid_change():
    assert is_root()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child gives up uid 0 and reports what is_root says afterwards
        try:
            os.close(r)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            os.write(w, b"1" if is_root() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    said = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert said == b"0"
    assert is_root()
