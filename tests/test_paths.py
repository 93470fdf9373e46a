"""sandbox_kernel.paths: the one path-containment test (within: the directory or below it;
below: strictly below, except "/"). No kernel is started."""

from __future__ import annotations

import pytest

from sandbox_kernel.paths import below, within


@pytest.mark.parametrize("path, top, is_within, is_below", [
    ("/a", "/a", True, False),          # the directory itself: within, not below
    ("/a/b", "/a", True, True),
    ("/a/b/c", "/a", True, True),
    ("/ab", "/a", False, False),        # a sibling sharing a prefix is neither
    ("/a", "/a/b", False, False),       # a parent is neither
    ("/b", "/a", False, False),
    ("/a/b", "/a/", True, True),        # a trailing slash on the top is ignored
    ("/x", "/", True, True),            # every absolute path is below "/"
    ("/", "/", True, True),             # ... "/" itself included (it starts with "/")
])
def test_within_and_below(path, top, is_within, is_below):
    assert within(path, top) is is_within
    assert below(path, top) is is_below


def test_below_is_within_but_not_equal_except_for_the_root():
    for path in ("/", "/a", "/a/b", "/ab", "/b/a"):
        for top in ("/a", "/a/b", "/b"):
            assert below(path, top) == (within(path, top) and path != top), (path, top)



def test_real_writable_expands_for_the_launch_and_resolves_links(tmp_path):
    from types import SimpleNamespace

    from sandbox_kernel.paths import real_writable

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    home = str(tmp_path / "link")
    ctx = SimpleNamespace(expand_paths=lambda paths: [p.replace("{home}", home) for p in paths])
    policy = SimpleNamespace(data={"filesystem": {"writable": ["{home}", str(tmp_path / "link" / "sub"), "/"]}})
    assert real_writable(policy, ctx) == [str(tmp_path / "real"), str(tmp_path / "real" / "sub"), "/"]
