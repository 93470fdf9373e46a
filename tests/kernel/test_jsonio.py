"""sandbox_kernel.jsonio answers as json does (the launch path parses and writes JSON without importing it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_kernel import jsonio

ROOT = os.path.dirname(os.path.dirname(jsonio.__file__))

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
    text = jsonio.dumps(doc, separators=separators, sort_keys=sort_keys)
    assert text == json.dumps(doc, separators=separators, sort_keys=sort_keys)
    assert same(jsonio.loads(text), json.loads(text))
    assert same(jsonio.loads(text.encode()), json.loads(text.encode()))
    padded = f" \n\t{text}\r\n "
    assert same(jsonio.loads(padded), json.loads(padded))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_accepted_or_refused_as_json_does(text):
    try:
        expected = json.loads(text)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            jsonio.loads(text)
        assert str(got.value) == str(e)
    else:
        assert same(jsonio.loads(text), expected)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", '{"a": 1} x', "nul", "\ufeff{}", '"\\ud800"', "NaN",
                                  "-Infinity", "1e999", '{"a": 1, "a": 2}', "[1] [2]", '"\x01"'])
def test_edge_cases(text):
    for data in (text, text.encode("utf-8", "surrogatepass"), text.encode("utf-16")):
        try:
            expected = json.loads(data)
        except ValueError as e:
            with pytest.raises(ValueError) as got:
                jsonio.loads(data)
            assert type(got.value) is type(e) and str(got.value) == str(e)
        else:
            assert same(jsonio.loads(data), expected)


def test_unserialisable_values_are_refused_as_json_does():
    for bad in ({1, 2}, {"k": object()}, {(1, 2): 3}):
        with pytest.raises(TypeError):
            json.dumps(bad)
        with pytest.raises(TypeError):
            jsonio.dumps(bad)


def test_json_is_not_imported():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sandbox_kernel import jsonio; "
            "v = jsonio.loads(jsonio.dumps({'a': [1, 2.5, None, 'x']})); "
            "print(v, sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, ROOT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{'a': [1, 2.5, None, 'x']} []"


@pytest.mark.parametrize("text", ['{"a": 1,', '{"a": tru}', '["\\x"]', "[1, 2", '{"a" 1}', "[" * 30000 + "]" * 30000])
def test_invalid_documents_before_json_is_imported(text):
    """In a fresh interpreter (the launcher's case), where _json cannot find json.decoder's
    error class in sys.modules: the same ValueError as json's, and nesting beyond the
    recursion limit is a ValueError too."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from sandbox_kernel import jsonio\n"
            "try:\n    jsonio.loads(sys.stdin.read())\nexcept ValueError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, ROOT], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr, out.stderr[-1000:]
    try:
        json.loads(text)
    except RecursionError:
        assert out.stdout.strip() == "ValueError JSON nested too deeply"
    except ValueError as e:
        assert out.stdout.strip() == f"JSONDecodeError {e}"
