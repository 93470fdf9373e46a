"""sandbox_kernel.standins answers as the standard modules and patterns it stands in for (the
launch path parses JSON, hashes, looks up commands and reads names and sizes without importing
json, hashlib, shutil or re)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_kernel import standins

ROOT = os.path.dirname(os.path.dirname(standins.__file__))

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                         max_leaves=30)


def same(a, b) -> bool:
    """Equality in which NaN equals NaN (json parses "NaN")."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, deadline=None)
@given(documents, st.sampled_from([(", ", ": "), (",", ":")]), st.booleans())
def test_dumps_and_loads_answer_as_json_does(doc, separators, sort_keys):
    text = standins.json_dumps(doc, separators=separators, sort_keys=sort_keys)
    assert text == json.dumps(doc, separators=separators, sort_keys=sort_keys)
    assert same(standins.json_loads(text), json.loads(text))
    assert same(standins.json_loads(text.encode()), json.loads(text.encode()))
    padded = f" \n\t{text}\r\n "
    assert same(standins.json_loads(padded), json.loads(padded))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_accepted_or_refused_as_json_does(text):
    try:
        expected = json.loads(text)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            standins.json_loads(text)
        assert str(got.value) == str(e)
    else:
        assert same(standins.json_loads(text), expected)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", '{"a": 1} x', "nul", "\ufeff{}", '"\\ud800"', "NaN",
                                  "-Infinity", "1e999", '{"a": 1, "a": 2}', "[1] [2]", '"\x01"'])
def test_edge_cases(text):
    for data in (text, text.encode("utf-8", "surrogatepass"), text.encode("utf-16")):
        try:
            expected = json.loads(data)
        except ValueError as e:
            with pytest.raises(ValueError) as got:
                standins.json_loads(data)
            assert type(got.value) is type(e) and str(got.value) == str(e)
        else:
            assert same(standins.json_loads(data), expected)


def test_unserialisable_values_are_refused_as_json_does():
    for bad in ({1, 2}, {"k": object()}, {(1, 2): 3}):
        with pytest.raises(TypeError):
            json.dumps(bad)
        with pytest.raises(TypeError):
            standins.json_dumps(bad)


def test_json_is_not_imported():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sandbox_kernel import standins; "
            "v = standins.json_loads(standins.json_dumps({'a': [1, 2.5, None, 'x']})); "
            "print(v, sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, ROOT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'a': [1, 2.5, None, 'x']} []"


@pytest.mark.parametrize("text", ['{"a": 1,', '{"a": tru}', '["\\x"]', "[1, 2", '{"a" 1}', "[" * 30000 + "]" * 30000])
def test_invalid_documents_before_json_is_imported(text):
    """In a fresh interpreter (the launcher's case), where _json cannot find json.decoder's
    error class in sys.modules: the same ValueError as json's, and nesting beyond the
    recursion limit is a ValueError too."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sandbox_kernel import standins\n"
            "try:\n    standins.json_loads(sys.stdin.read())\n"
            "except ValueError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, ROOT], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr[-1000:]
    try:
        json.loads(text)
    except RecursionError:
        assert out.stdout.strip() == "ValueError JSON nested too deeply"
    except ValueError as e:
        assert out.stdout.strip() == f"JSONDecodeError {e}"


# --------------------------------------------------------------------------- hashlib, signal, socket


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_sha256_answers_as_hashlib_does(data):
    import hashlib

    assert standins.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert standins.sha256_constructor()(data).digest() == hashlib.sha256(data).digest()


def test_signal_and_socket_are_the_standard_modules_c_parts():
    import signal
    import socket

    for name in ("SIGKILL", "SIGTERM", "SIGCHLD", "SIG_BLOCK", "SIG_SETMASK", "SIG_DFL"):
        assert getattr(standins.signal, name) == getattr(signal, name), name
    sock = standins.socket_module()
    for name in ("SOCK_STREAM", "SOCK_CLOEXEC", "SCM_RIGHTS", "AF_UNIX"):
        assert getattr(sock, name) == getattr(socket, name), name
    assert sock.CMSG_SPACE(4) == socket.CMSG_SPACE(4)


# --------------------------------------------------------------------------- shutil.which


def test_which_answers_as_shutil_which_does():
    for name, path in [("ls", None), ("ls", "/usr/bin:/bin"), ("ls", ""), ("nosuch-cmd", None), ("/bin/ls", ""),
                       ("./nosuch", None), ("python3", "::/usr/bin"), ("tmp", "/")]:
        assert standins.which(name, path) == shutil.which(name, path=path), (name, path)


# --------------------------------------------------------------------------- re


def test_kernel_id_is_read_as_the_pattern_reads_it():
    pattern = re.compile(r"kernel-([A-Za-z0-9_-]{1,64})\.json$")
    whole = re.compile(r"[A-Za-z0-9_-]{1,64}")
    pieces = st.sampled_from(["kernel-", ".json", ".", "-", "_", "a", "Z", "9", "é", " ", "/", "x" * 30])

    @settings(max_examples=500, deadline=None)
    @given(st.lists(pieces, max_size=8).map("".join))
    def check(name):
        m = pattern.search(os.path.basename(name))
        assert standins.kernel_id_of(name) == (m.group(1) if m else "")
        assert standins.is_kernel_id(name) == bool(whole.fullmatch(name))

    check()
    assert standins.kernel_id_of(f"/run/user/0/jupyter/kernel-{uuid.UUID(int=7)}.json") == str(uuid.UUID(int=7))
    assert not standins.is_kernel_id(7) and not standins.is_kernel_id(None)


def test_sizes_and_names_are_read_as_the_patterns_read_them():
    size_re = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?$")
    name_re = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
    which_re = re.compile(r"^\{which:([A-Za-z0-9._+-]+)\}\Z")
    chars = st.sampled_from(list("0123456789.KMGTiBb \t\u00a0\u0663x-_+{}:") + ["which:", "{which:", "\n"])

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(chars, max_size=10).map("".join))
    def check(text):
        m = size_re.match(text.strip())
        assert standins.split_size(text.strip()) == ((m.group(1), m.group(2)) if m else None)
        assert standins.valid_profile_name(text) == bool(name_re.fullmatch(text))
        m = which_re.match(text)
        assert standins.which_name(text) == (m.group(1) if m else None)

    check()
