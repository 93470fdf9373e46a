"""Red team: code that reaches the kernel in a message other than a cell's source
(user_expressions must not skip the pre-execution check).

An ``execute_request`` carries ``user_expressions``, which IPython evaluates after the
cell in the same namespace; ``get_ipython().getoutput(...)`` or ``run_cell_magic`` there
runs a shell command. The pre-execution check (soft: it reads source) now reads them as
it reads the cell, for every execute_request (silent or not, shell or control channel).
The effect asserted: the denied command did not run (the file it would create is absent).
Under `free`, `shell.deny` refuses words matching ``magnet:?*`` (BitTorrent).
"""

from __future__ import annotations

import os

import pytest
from rtutil import attempt

pytestmark = pytest.mark.redteam

# `touch MARKER magnet:?xt=...`: the second word is denied by the profile's shell.deny
VARIANTS = {
    "getoutput": "get_ipython().getoutput('touch {marker} magnet:?xt=urn:btih:0')",
    "system": "get_ipython().system('touch {marker} magnet:?xt=urn:btih:0')",
    "cell_magic": "get_ipython().run_cell_magic('bash', '', 'touch {marker} magnet:?xt=urn:btih:0')",
    "os_system": "__import__('os').system('touch {marker} magnet:?xt=urn:btih:0')",
}


def execute(k, content: dict, channel: str = "shell") -> dict:
    msg = k.kc.session.msg("execute_request", content)
    getattr(k.kc, f"{channel}_channel").send(msg)
    get = k.kc.get_shell_msg if channel == "shell" else k.kc.get_control_msg
    while True:
        reply = get(timeout=60)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply


@attempt("precheck", hard=False)
@pytest.mark.parametrize("how", sorted(VARIANTS))
@pytest.mark.parametrize("channel,silent", [("shell", False), ("shell", True), ("control", False)])
def test_denied_command_in_user_expressions(pool, who, how, channel, silent):
    """A shell command the profile denies, placed in `user_expressions` of an innocent cell
    (getoutput, system, a %%bash cell magic, os.system), silent or not, on the shell or
    control channel."""
    k = pool.get("free", who)
    marker = f"rt-uexpr-{how}-{channel}-{int(silent)}"
    path = os.path.join(k.cwd, marker)
    content = {"code": "rt_innocent = 1", "silent": silent, "store_history": not silent,
               "user_expressions": {"x": VARIANTS[how].format(marker=marker)}, "allow_stdin": False,
               "stop_on_error": False}
    try:
        reply = execute(k, content, channel)
        k.run("pass")  # the output of anything the request started has been flushed
        assert not os.path.exists(path), reply["content"]
    finally:
        if os.path.exists(path):
            os.unlink(path)
