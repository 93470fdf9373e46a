"""Network refusals through the libraries people use carry the sandbox's one-line rule hint
(docs/network.md), through real kernels, as root and as an ordinary user.

seccomp and Landlock refuse the socket or the connection (hard); what a cell shows is the
library's error: urllib's URLError around the PermissionError, requests' ConnectionError
three exceptions deep, "Temporary failure in name resolution" where the resolver's sockets
were refused, curl's "Couldn't connect to server". The kernel adds `sandbox: refused by
profile ...` under such errors (soft: a message), and under a failed `!` network command a
`sandbox: ... failed` line; never where the rule would have let the connection through
(a genuine network failure is not blamed on the sandbox)."""

from __future__ import annotations

import kernelutil
import pytest

pytestmark = pytest.mark.slow

NONE_RULE = "network.mode is 'none': only UNIX sockets can be created"
DNS_NONE = NONE_RULE + ", so host names cannot be resolved either"
FREE_RULE = "network.mode is 'restricted': TCP connections only to ports 53, 80, 443, no UDP"


def sandbox_lines(r) -> list[str]:
    text = "\n".join([r.traceback, r.stderr])
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("sandbox:")]


def one_hint(r, profile: str, rule: str) -> None:
    lines = sandbox_lines(r)
    assert r.status == "error" or r.stderr, str(r)
    assert len(lines) == 1, str(r)
    assert lines[0].startswith(f"sandbox: refused by profile '{profile}': {rule}"), str(r)


@pytest.fixture(scope="module")
def nodns_profile():
    kernelutil.write_profile("nethint-nodns", """
        extends: base
        description: TCP to 443 only, no DNS
        network:
          mode: restricted
          tcp_connect_ports: [443]
        """)
    return "nethint-nodns"


# library calls that fail under `none`, each with the rule the line must name
NONE_CASES = {
    "urllib by name": ("import urllib.request\nurllib.request.urlopen('http://example.com/', timeout=10)", DNS_NONE),
    "urllib by IP": ("import urllib.request\nurllib.request.urlopen('http://192.0.2.1/', timeout=10)", NONE_RULE),
    "requests by name": ("import requests\nrequests.get('http://example.com/', timeout=10)", DNS_NONE),
    "requests by IP": ("import requests\nrequests.get('http://192.0.2.1/', timeout=10)", NONE_RULE),
    "http.client by name": ("import http.client\nhttp.client.HTTPConnection('example.com', 80, timeout=10)"
                            ".request('GET', '/')", DNS_NONE),
    "getaddrinfo": ("import socket\nsocket.getaddrinfo('example.com', 443)", DNS_NONE),
    "gethostbyname": ("import socket\nsocket.gethostbyname('example.com')", DNS_NONE),
    "asyncio by name": ("import asyncio\nawait asyncio.open_connection('example.com', 80)", DNS_NONE),
    "asyncio by IP": ("import asyncio\nawait asyncio.open_connection('192.0.2.1', 80)", NONE_RULE),
}


@pytest.mark.kernel
@pytest.mark.parametrize("profile", ["offline", "base"])
def test_library_refusals_under_none_name_the_rule(shared_kernels, who, profile):
    k = shared_kernels(profile, who)
    for case, (code, rule) in NONE_CASES.items():
        r = k.run(code, timeout=60)
        assert r.status == "error", (case, str(r))
        one_hint(r, profile, rule)
    # what is not the network's refusal gets no line; a name /etc/hosts answers still resolves
    r = k.run("import socket\nprint(socket.getaddrinfo('localhost', 80)[0][4][1])\nopen('/no/such/file')")
    assert r.ename == "FileNotFoundError" and "80" in r.stdout and not sandbox_lines(r), str(r)


@pytest.mark.kernel
def test_restricted_refusals_name_the_ports_and_allowed_failures_get_none(shared_kernels, who, nodns_profile):
    k = shared_kernels("free", who)
    # a port the profile does not list: Landlock's EACCES, through urllib and requests
    for code in ("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:8080/', timeout=10)",
                 "import requests\nrequests.get('http://127.0.0.1:8080/', timeout=10)"):
        one_hint(k.run(code), "free", FREE_RULE)
    # allowed port, nothing listening: the network's own answer, no sandbox line
    r = k.run("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:80/', timeout=10)")
    assert r.status == "error" and "refused" in r.traceback.lower() and not sandbox_lines(r), str(r)
    # DNS is allowed here (TCP 53): a name that does not resolve is not the sandbox's doing
    r = k.run("import socket\nsocket.getaddrinfo('no-such-host.invalid', 443)")
    assert r.ename == "gaierror" and not sandbox_lines(r), str(r)
    # restricted without port 53 and without UDP: lookups are the sandbox's refusal
    k2 = shared_kernels(nodns_profile, who)
    r = k2.run("import socket\nsocket.getaddrinfo('example.com', 443)")
    assert r.ename == "gaierror", str(r)
    one_hint(r, nodns_profile, "network.mode is 'restricted': TCP connections only to ports 443, no UDP, no raw "
                               "sockets; host names cannot be resolved: DNS needs port 53")


@pytest.mark.kernel
def test_full_network_failures_are_not_blamed_on_the_sandbox(shared_kernels, who):
    k = shared_kernels("research", who)
    r = k.run("import socket\nsocket.getaddrinfo('no-such-host.invalid', 443)")
    assert r.ename == "gaierror" and not sandbox_lines(r), str(r)
    r = k.run("!curl -sS --max-time 10 http://127.0.0.1:1/")
    assert "Couldn't connect" in r.output or "Failed to connect" in r.output, str(r)
    assert not sandbox_lines(r), str(r)


@pytest.mark.kernel
def test_failed_network_commands_get_a_hint_line(shared_kernels, who):
    """`!curl` under `none` (base lets curl run) and to an unlisted port under `free`: one
    `sandbox:` line under curl's own message; what the rules allow gets none. Under
    `offline` (no shell) the same through the shell-less `!` runner."""
    k = shared_kernels("base", who)
    r = k.run("!curl -sS --max-time 10 http://192.0.2.1/")
    assert "curl: (7)" in r.output, str(r)
    (line,) = sandbox_lines(r)
    assert line == ("sandbox: `curl` failed (exit status 7); if it needed the network, it was refused by profile "
                    f"'base': {NONE_RULE}"), str(r)
    r = k.run("!echo no network here; false")
    assert not sandbox_lines(r), str(r)
    # a failing command in a function: the `!` line still expands the function's variables
    r = k.run("def f():\n    url = 'http://192.0.2.1/'\n    !curl -sS --max-time 10 $url\nf()")
    assert "curl: (7)" in r.output and len(sandbox_lines(r)) == 1, str(r)

    k = shared_kernels("free", who)
    r = k.run("!curl -sS --max-time 10 http://127.0.0.1:8080/")
    (line,) = sandbox_lines(r)
    assert line.endswith(f"'free': {FREE_RULE}, no raw sockets; this command connects to port 8080"), str(r)
    r = k.run("!curl -sS --max-time 10 http://127.0.0.1:80/")
    assert "curl: (7)" in r.output and not sandbox_lines(r), str(r)

    k = shared_kernels("offline", who)
    r = k.run("import sys\n!{sys.executable} -c \"import urllib.request; urllib.request.urlopen('http://192.0.2.1/')\"")
    assert "PermissionError" in r.output or "Operation not permitted" in r.output, str(r)
    assert any(ln.endswith(f"refused by profile 'offline': {NONE_RULE}") for ln in sandbox_lines(r)), str(r)


@pytest.mark.parametrize("cmd,code,profile,expect", [
    ("curl -sS http://192.0.2.1/", 7, "offline", "`curl` failed (exit status 7)"),
    ("/usr/bin/python3 -m pip install --retries 0 requests", 1, "offline", "`pip` failed (exit status 1)"),
    ("git clone git@example.com:org/repo.git", 128, "free", "connects to port 22"),
    ("wget https://example.com/x", 4, "free", None),              # 443 is listed: not the sandbox's doing
    ("curl http://example.com:8080/", 7, "free", "connects to port 8080"),
    ("ls /nonexistent", 2, "offline", None),                        # no network in it
    ("curl http://192.0.2.1/", 0, "offline", None),                 # it worked
    ("curl http://192.0.2.1:8080/", 7, "research", None),           # `full`: nothing refused
])
def test_command_hint_rules(cmd, code, profile, expect):
    """Which failed `!` lines get the line, without a kernel (the kernel tests above run the real ones)."""
    from sandbox_kernel import nethint
    from sandbox_kernel.policy import resolve

    hint = nethint.command_hint(cmd, code, resolve(profile))
    if expect is None:
        assert hint is None, hint
    else:
        assert hint is not None and expect in hint and f"refused by profile '{profile}'" in hint, hint
