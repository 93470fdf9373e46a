import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Test modules import the suite's helpers (kernelutil, testenv, ...) from tests/, and a few import
# helpers of another test module (test_cgroup's docker_prefix, ...): tests/ and its directories
# (one per area of the code: layers, kernel, cli, policy, pool, deploy, benchmarks) are on sys.path.
_HERE = Path(__file__).parent
sys.path[:0] = [str(_HERE)] + sorted(str(d) for d in _HERE.iterdir()
                                     if d.is_dir() and d.name not in ("redteam", "__pycache__"))

import kernelutil  # noqa: E402
from testenv import IS_ROOT, REPO  # noqa: E402

from sandbox_kernel import policy_load  # noqa: E402

# jsonschema first as the product imports it, without the format-only libraries (policy_load.
# FORMAT_ONLY_MODULES): nbformat, which test modules import, would otherwise import it with
# rfc3987_syntax, whose Lark grammars take ~3 s in every pytest process and xdist worker.
policy_load._import_jsonschema()
# pytest keeps its assertion-rewritten test modules in __pycache__ only where bytecode may be
# written; an environment with PYTHONDONTWRITEBYTECODE=1 had every process rewrite all of them
# (~6 s). This process only: the kernels and programs the tests start keep the environment's choice.
sys.dont_write_bytecode = False

# Every kernel in the suite finds its kernelspec and test profiles here, the way a
# platform would configure Jupyter: nothing is installed into the user's dirs.
os.environ["JUPYTER_PATH"] = str(kernelutil.PREFIX / "share" / "jupyter")
os.environ["SANDBOX_KERNEL_PROFILE_PATH"] = str(kernelutil.PROFILES)
os.environ.pop("SANDBOX_KERNEL_CEILING", None)
os.environ.pop("SANDBOX_KERNEL_POLICY", None)
kernelutil.PROFILES.mkdir(parents=True, exist_ok=True)
kernelutil.AUDIT_DIR.mkdir(parents=True, exist_ok=True)
os.chmod(kernelutil.PROFILES, 0o755)
os.chmod(kernelutil.AUDIT_DIR, 0o777)



_popen_init = subprocess.Popen.__init__


def _checked_popen_init(self, args, *a, **kw):
    """subprocess.Popen in the test process (jupyter_client's, asyncio's and the tests' own):
    a command that starts a kernel needs the running test's `kernel` marker."""
    what = kernelutil.current_test is not None and kernelutil.kernel_command(args)
    if what:
        kernelutil.require_kernel_marker(what)
    _popen_init(self, args, *a, **kw)


subprocess.Popen.__init__ = _checked_popen_init


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (scripts/test.sh), the heaviest test files first, so that no worker is left
    with a long file while the others are idle: a file weighs 10 per `soak` test and 3 per `slow` one;
    files of equal weight, and a file's tests, keep their order; a run without workers keeps pytest's."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cost = {"soak": 10, "slow": 3}
    weight: dict[str, int] = {}
    for item in items:
        names = {m.name for m in item.iter_markers()}
        weight[item.nodeid.split("::")[0]] = weight.get(item.nodeid.split("::")[0], 0) + sum(
            cost.get(n, 0) for n in names)
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    kernelutil.current_test = item  # (before the test's fixtures start anything)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    kernelutil.current_test = None
    started = item.stash.get(kernelutil.UNMARKED, None)
    if started:  # (also where a thread started it and the test itself went on)
        pytest.fail(f"{item.nodeid} started {', '.join(started)} but is not marked `kernel`: "
                    f"{kernelutil.MARKER_HINT}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(kernelutil.PREFIX, ignore_errors=True)


@pytest.fixture
def no_orphaned_specs():
    """For tests that delete or break the profile of a kernelspec they installed: its kernelspec
    goes with the test (kernelutil.remove_orphaned_specs), or doctor in later tests names it."""
    before = kernelutil.spec_names()
    yield
    kernelutil.remove_orphaned_specs(before)


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    """An empty directory first on the profile search path; no ceiling."""
    from sandbox_kernel import policy

    d = tmp_path / "profiles"
    d.mkdir()
    monkeypatch.setenv(policy.PROFILE_PATH_ENV, str(d))
    monkeypatch.delenv(policy.CEILING_ENV, raising=False)
    return d


@pytest.fixture
def make_kernel(tmp_path):
    """make_kernel(profile, user=None, cwd=None, env=None, init="c") -> a running Kernel, shut down after the test
    (init: kernelutil.install_spec)."""
    started = []

    def make(profile, *, user=None, cwd=None, env=None, startup_timeout=60, transport="tcp", connection_base=None,
             init="c"):
        if cwd is None:
            cwd = kernelutil.user_workdir(user) if user else str(tmp_path)
        k = kernelutil.Kernel(profile, cwd=str(cwd), user=user.pw_name if user else None, env=env,
                              startup_timeout=startup_timeout, transport=transport, connection_base=connection_base,
                              init=init)
        started.append(k)
        return k

    yield make
    for k in started:
        try:
            k.shutdown()
        except Exception:
            pass


@pytest.fixture(scope="module")
def shared_kernels():
    """shared_kernels(profile, who=None) -> one running Kernel per (profile, user) for the whole
    module, shut down after its last test: for tests that only probe a kernel. A test that
    damages, restarts or shuts down its kernel, or needs its own working directory, uses
    make_kernel."""
    pool = kernelutil.Pool()
    yield pool.get
    pool.close()


@pytest.fixture(scope="session")
def unprivileged():
    """An ordinary user (created with useradd) who can run this environment's Python."""
    if not IS_ROOT:
        pytest.skip("creating a test user needs root (useradd); run the suite as root to cover both")
    if not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("useradd or setpriv is not installed")
    pw = kernelutil.ensure_user()
    with kernelutil.paths_open_for_others(
            [sys.prefix, os.path.realpath(sys.executable), sys.base_prefix, str(REPO), str(kernelutil.PREFIX)]):
        yield pw


@pytest.fixture(params=["root", "user"])
def who(request):
    """Run a test as root (as CI and many platforms do) and as an ordinary user."""
    if request.param == "root":
        if not IS_ROOT:
            pytest.skip("not running as root")
        return None
    return request.getfixturevalue("unprivileged")


# --------------------------------------------------------------------------- kernel audit


def _set_audit(enabled: int) -> None:
    import socket
    import struct

    from sandbox_kernel import kaudit

    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, kaudit.NETLINK_AUDIT)
    try:
        body = struct.pack("=10I", 1, enabled, 0, 0, 0, 0, 0, 0, 0, 0)  # AUDIT_STATUS_ENABLED
        s.send(struct.pack("=IHHII", 16 + len(body), 1001, 1 | 4, 1, 0) + body)  # AUDIT_SET, request + ack
        err = struct.unpack_from("=i", s.recv(8192), 16)[0]
        if err:
            raise OSError(-err, os.strerror(-err))
    finally:
        s.close()


@pytest.fixture
def host_audit():
    """Kernel audit on for this test only (it is host-wide), then back to what it was; one such
    test at a time (a parallel worker's test would turn it off under this one)."""
    import fcntl

    if not IS_ROOT:
        pytest.skip("turning kernel audit on for the test needs root (CAP_AUDIT_CONTROL)")
    from sandbox_kernel import kaudit
    from sandbox_kernel.layers import landlock

    if landlock.abi_version() < 7:
        pytest.skip(f"Landlock ABI {landlock.abi_version()} logs no refusals to kernel audit (ABI 7, Linux 6.15+)")
    with open(f"{kernelutil.HOST_LOCK}.audit", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = kaudit.audit_enabled()
        if before is None:
            pytest.skip("this host's kernel audit cannot be asked (no NETLINK_AUDIT or no CAP_AUDIT_CONTROL)")
        if not before:
            try:
                _set_audit(1)
            except OSError as e:
                pytest.skip(f"kernel audit cannot be turned on here ({e.strerror})")
        try:
            yield
        finally:
            if not before:
                _set_audit(0)
            assert kaudit.audit_enabled() == before
