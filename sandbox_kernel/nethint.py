"""The one-line network hint, where a refusal comes through a library or a child process.

seccomp and Landlock refuse a socket or a connection with ``EPERM``/``EACCES`` (hard); what
a cell shows is what the library made of it: urllib's ``URLError`` wrapping the
``PermissionError``, requests' ``ConnectionError`` three exceptions deep, a
``socket.gaierror`` "Temporary failure in name resolution" where the resolver's own sockets
were refused, or, for ``!curl``, "Couldn't connect to server". This module finds the
sandbox's refusal in such an error (the exception chain: ``__cause__``, ``__context__``,
``.reason``, exceptions in ``.args``) and words the rule, and for ``!`` lines says which rule
a failed network command met. It changes nothing that is refused: a message (soft).

Name resolution is the sandbox's doing only where the profile leaves the resolver no way to
a name server: ``network.mode: none``, or ``restricted`` with neither ``network.udp`` nor
port 53 in ``tcp_connect_ports`` (without UDP the launcher sets ``RES_OPTIONS=use-vc``: DNS
over TCP). Elsewhere a failed lookup is the network's own (no hint).
"""

from __future__ import annotations

import re
import socket

# getaddrinfo's "the name could not be resolved" codes (not EAI_SERVICE, EAI_FAMILY, ...: misuse)
RESOLUTION_ERRORS = {getattr(socket, n) for n in ("EAI_AGAIN", "EAI_FAIL", "EAI_NONAME", "EAI_NODATA", "EAI_SYSTEM",
                                                   "EAI_ADDRFAMILY") if hasattr(socket, n)}
NET_TOOLS = {"curl", "wget", "git", "pip", "pip3", "uv", "conda", "mamba", "micromamba", "npm", "yarn", "apt",
             "apt-get", "ssh", "scp", "sftp", "rsync", "nc", "ncat", "netcat", "telnet", "ping", "dig", "nslookup",
             "host", "huggingface-cli", "hf", "ftp", "aria2c", "http", "gsutil", "aws", "kaggle"}
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ssh": 22, "git": 9418, "git+ssh": 22, "ws": 80, "wss": 443,
                 "s3": 443, "gs": 443, "hf": 443}
URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^@/\s'\"]*@)?(\[[0-9a-fA-F:.]+\]|[^/:\s'\"?#]+)(?::(\d+))?")
SCP_RE = re.compile(r"(?:^|\s)[\w.-]+@([\w.-]+):")  # git@github.com:org/repo


def rule_text(policy) -> str | None:
    """The network rule that refuses IP sockets or connections, or None under `full`."""
    net = policy.network
    if net["mode"] == "none":
        return "network.mode is 'none': only UNIX sockets can be created"
    if net["mode"] == "restricted":
        ports = ", ".join(map(str, net["tcp_connect_ports"])) or "none"
        return (f"network.mode is 'restricted': TCP connections only to ports {ports}"
                + ("" if net["udp"] else ", no UDP") + ", no raw sockets")
    return None


def dns_refused(policy) -> bool:
    net = policy.network
    if net["mode"] == "none":
        return True
    return net["mode"] == "restricted" and not net["udp"] and 53 not in net["tcp_connect_ports"]


def dns_text(policy) -> str:
    if policy.network["mode"] == "none":
        return (f"{rule_text(policy)}, so host names cannot be resolved either (DNS needs a UDP or TCP socket to "
                f"a name server)")
    return (f"{rule_text(policy)}; host names cannot be resolved: DNS needs port 53 in network.tcp_connect_ports "
            f"(or network.udp)")


def causes(err: BaseException, limit: int = 12):
    """The exceptions behind `err`, nearest first: __cause__, __context__, a ``reason``
    attribute (urllib's URLError, urllib3's MaxRetryError), exceptions among its args."""
    seen, todo, n = {id(err)}, [err], 0
    while todo and n < limit:
        e = todo.pop(0)
        inner = [e.__cause__, e.__context__, getattr(e, "reason", None)] + list(getattr(e, "args", ()) or ())
        for x in inner:
            if isinstance(x, BaseException) and id(x) not in seen:
                seen.add(id(x))
                n += 1
                todo.append(x)
                yield x


def explain_resolution(err: BaseException, policy) -> tuple[str, str] | None:
    """A failed name lookup (``socket.gaierror``) where the profile leaves the resolver no name server."""
    if isinstance(err, socket.gaierror) and err.errno in RESOLUTION_ERRORS and dns_refused(policy):
        return ("seccomp" if policy.network["mode"] == "none" else "landlock"), dns_text(policy)
    return None


def _targets(cmd: str) -> list[tuple[str, int | None]]:
    """(host, port) of each URL (or scp-style ``user@host:``) in a command line."""
    out = []
    for scheme, host, port in URL_RE.findall(cmd):
        out.append((host.strip("[]"), int(port) if port else DEFAULT_PORTS.get(scheme.lower())))
    for host in SCP_RE.findall(cmd):
        out.append((host, 22))
    return out


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            continue
    return False


def command_hint(cmd: str, exit_code, policy) -> str | None:
    """The line to add under a failed ``!`` command that the network rules likely stopped:
    under ``none`` any network tool or URL; under ``restricted`` a URL whose port is not
    listed, or whose host name needs the DNS the profile refuses. None under ``full``, for a
    command that succeeded, or where the rules would have let it through."""
    if not isinstance(exit_code, int) or exit_code == 0 or not isinstance(cmd, str):
        return None
    rule = rule_text(policy)
    if rule is None:
        return None
    words = [w.strip("'\"") for w in cmd.split()]
    tool = next((w.rsplit("/", 1)[-1] for w in words if "=" not in w), "")
    if "-m" in words[:-1]:  # `python -m pip install ...` (what %pip runs)
        tool = words[words.index("-m") + 1]
    targets = _targets(cmd)
    if policy.network["mode"] == "none":
        if not targets and tool not in NET_TOOLS:
            return None
        why = rule
    else:
        allowed = set(policy.network["tcp_connect_ports"])
        ports = [p for _h, p in targets if p is not None and p not in allowed]
        names = [h for h, _p in targets if not _is_ip(h) and h != "localhost"]
        if ports:
            why = f"{rule}; this command connects to port {ports[0]}"
        elif names and dns_refused(policy):
            why = dns_text(policy)
        else:
            return None
    what = f"`{tool}`" if tool else "the command"
    return (f"sandbox: {what} failed (exit status {exit_code}); if it needed the network, it was refused by profile "
            f"'{policy.label}': {why}")


__all__ = ["causes", "command_hint", "dns_refused", "explain_resolution", "rule_text"]
