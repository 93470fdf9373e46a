"""Fixtures and collection hooks of the red-team suite; helpers are in rtutil.py (read its
docstring for what an attempt is)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from testenv import IS_ROOT  # noqa: E402
import kernelutil  # noqa: E402
from rtutil import Listener, start, stop  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "attempt(layer, hard): a red-team attempt and the layer that stops it")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.redteam)
        if not item.name.startswith("test_security_doc"):
            item.add_marker(pytest.mark.kernel)  # every attempt runs through a real kernel
        if item.get_closest_marker("attempt") is None and not item.name.startswith("test_security_doc"):
            raise pytest.UsageError(f"{item.nodeid}: every red-team test names its layer with @attempt(...)")
    out = os.environ.get("SBX_RT_LIST_ATTEMPTS")
    if out:  # used by test_security_doc.py: which tests exist and which layer each names
        rows = []
        for item in items:
            m = item.get_closest_marker("attempt")
            if m is not None and here in Path(str(item.fspath)).parents:
                doc = (getattr(item, "function", None).__doc__ or "").strip().split("\n\n")[0]
                rows.append({"nodeid": item.nodeid, "layer": m.kwargs["layer"], "hard": m.kwargs["hard"],
                             "doc": " ".join(doc.split())})
        Path(out).write_text(json.dumps(rows))


@pytest.fixture
def listener():
    li = Listener()
    yield li
    li.close()


@pytest.fixture(scope="session")
def pool():
    """One long-lived kernel per (profile, user) for attempts that do not damage it."""
    p = kernelutil.Pool(spec_suffix="-pool", startup_timeout=90)
    yield p
    p.close()


@pytest.fixture
def kernels():
    """start(...) for destructive attempts: every kernel is shut down after the test."""
    started = []

    def make(profile, who, **kw):
        k = start(profile, who, **kw)
        started.append(k)
        return k

    yield make
    for k in started:
        stop(k)


@pytest.fixture(scope="module", params=["root", "user"])
def mwho(request):
    """`who` for module-scoped fixtures: root, then the ordinary user."""
    if request.param == "root":
        if not IS_ROOT:
            pytest.skip("not running as root")
        return None
    return request.getfixturevalue("unprivileged")


