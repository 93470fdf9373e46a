import pytest

pytestmark = pytest.mark.kernel  # every test here starts a real kernel


def test_kernel_starts_and_refuses(make_kernel):
    k = make_kernel("free")
    assert k.ok("print(6*7)").stdout.strip() == "42"
    r = k.run("import roop")
    assert r.status == "error" and r.ename == "ProhibitedImportError"


def test_kernel_as_user(make_kernel, unprivileged):
    k = make_kernel("free", user=unprivileged)
    r = k.ok("import os; print(os.getuid(), os.environ['HOME'])")
    assert r.stdout.split() == [str(unprivileged.pw_uid), unprivileged.pw_dir]
