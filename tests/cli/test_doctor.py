"""`sandbox-kernel doctor`: which profiles would start on this host, and for each that would
not, which layer refuses and the fix. It starts the launcher for real, so these tests shape
the host (a missing layer, a Docker container) and read its verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import kernelutil
import pytest
from testenv import IS_ROOT, REPO

from sandbox_kernel import doctor
from test_cgroup import docker_prefix

SHIPPED = doctor.shipped_profiles()


def sk(*args, prefix=(), user=None, env=None, cwd=None):
    argv = list(prefix)
    # doctor tries every profile on the search path: not the test profiles other tests write
    # nor the kernelspecs other tests install for their profiles (doctor flags orphaned ones)
    run_env = dict(os.environ, SANDBOX_KERNEL_PROFILE_PATH="", JUPYTER_PATH=str(kernelutil.PREFIX / "no-kernelspecs"))
    if user is not None:
        argv += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        run_env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        run_env.pop("TMPDIR", None)
        cwd = cwd or kernelutil.user_workdir(user)
    run_env.update(env or {})
    return subprocess.run(argv + [sys.executable, "-m", "sandbox_kernel.cli", *args], capture_output=True, text=True,
                          env=run_env, cwd=cwd, timeout=600)


def verdicts(p, rc: int = 0) -> dict[str, dict]:
    """The verdicts of `doctor --json`; exit status 0 when every profile starts, 1 when one is refused."""
    assert p.returncode == rc, p.stderr
    assert "Traceback" not in p.stderr
    return {t["profile"]: t for t in json.loads(p.stdout)["profiles"]}


@pytest.mark.kernel
def test_every_shipped_profile_is_tried_and_starts_here(who):
    """On this host (root or an ordinary user) every shipped profile starts: the launcher
    really ran each (offline too, whose exec.allow admits only this environment's Python)."""
    out = verdicts(sk("doctor", "--json", user=who))
    assert sorted(out) == SHIPPED and {"base", "free", "gpu", "offline", "research"} <= set(out)
    for name, t in out.items():
        assert t["starts"], t
        for layer in ("landlock", "seccomp", "no_new_privs", "rlimits", "capabilities"):
            assert t["layers"][layer]["state"] == "active", (name, layer, t["layers"][layer])
        assert t["layers"]["cgroup"]["state"] == ("active" if who is None else "not needed"), t["layers"]["cgroup"]


@pytest.mark.kernel
def test_a_host_without_landlock_is_named_with_the_fix():
    env = {"SANDBOX_KERNEL_SIMULATE_MISSING": "landlock"}
    out = verdicts(sk("doctor", "--json", env=env), rc=1)
    assert sorted(out) == SHIPPED, out
    for t in out.values():
        assert not t["starts"] and t["layer"] == "landlock", t
        assert "Landlock" in t["why"] and "lsm=" in t["fix"] and "{landlock: best-effort}" in t["fix"], t
    p = sk("doctor", "--profile", "offline", env=env)
    assert p.returncode == 1 and "1 of 1 profile would not start here: offline" in p.stderr, p.stderr
    text = p.stdout
    row = [ln.split() for ln in text.splitlines() if ln.split()[:2] == ["offline", "REFUSED"]]
    assert row and row[0][2:4] == ["by", "landlock:"], text
    assert "boot a Linux kernel with Landlock" in text, text


@pytest.mark.kernel
@pytest.mark.skipif(not IS_ROOT, reason="simulating a container needs root (mount namespace, setpriv)")
def test_a_docker_root_container_is_refused_by_the_cgroup_layer_with_the_fix():
    """Docker's defaults as root (read-only /sys/fs/cgroup, its capability set): no profile
    starts, each refusal names the cgroup layer and the fixes with the profile's own limits."""
    out = verdicts(sk("doctor", "--json", prefix=docker_prefix()), rc=1)
    assert sorted(out) == SHIPPED, out
    for _name, t in out.items():
        assert not t["starts"] and t["layer"] == "cgroup", t
        assert "Read-only file system" in t["why"], t
        assert "runAsUser: 1000" in t["fix"] and "{cgroup: best-effort}" in t["fix"], t
    assert "--pids-limit 4096`" in out["research"]["fix"]
    assert "--pids-limit 512 --memory 8g" in out["free"]["fix"]


@pytest.mark.kernel
@pytest.mark.skipif(not IS_ROOT, reason="simulating a container needs root (mount namespace, setpriv)")
@pytest.mark.serial  # uid 1000 without a user namespace: RLIMIT_NPROC counts all its tasks on the host (on a
#                      clean machine the suite's test user may be uid 1000, with the other tests' kernels)
def test_a_docker_container_as_uid_1000_starts_every_profile(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 1000, 1000)
    os.chmod(tmp_path, 0o755)
    with kernelutil.paths_open_for_others([sys.prefix, os.path.realpath(sys.executable), sys.base_prefix, str(REPO),
                                           str(kernelutil.PREFIX)]):
        p = sk("doctor", "--json", cwd=str(home),
               prefix=docker_prefix(root=False) + ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--"],
               env={"HOME": str(home), "USER": "jovyan", "LOGNAME": "jovyan"})
    out = verdicts(p)
    assert sorted(out) == SHIPPED, out
    for _name, t in out.items():
        assert t["starts"], t
        assert t["layers"]["cgroup"]["state"] == "not needed" and "RLIMIT_NPROC" in t["layers"]["cgroup"]["detail"]


@pytest.mark.kernel
def test_plain_report_keeps_its_sections_and_adds_the_verdicts():
    p = sk("doctor")
    assert p.returncode == 0, p.stderr
    for section in ("Landlock: ABI", "layers in force in this process:", "accelerator device nodes present:",
                    "rules (hard:", "profiles on this host (each started for real"):
        assert section in p.stdout, section
    # rich tables: one row per profile, its first line "profile verdict ..."
    lines = [ln.split() for ln in p.stdout.split("profiles on this host", 1)[1].splitlines()[1:]]
    assert {ln[0] for ln in lines if len(ln) > 1 and ln[1] in ("starts", "REFUSED")} == set(SHIPPED)


@pytest.mark.kernel
def test_works_before_install(tmp_path):
    """No kernelspec anywhere (nothing installed yet): the launcher is still tried, without a
    validated-policy cache."""
    env = {"JUPYTER_PATH": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    assert "--policy-cache" not in doctor.launch_command("free") or doctor._installed_cache("free")
    out = verdicts(sk("doctor", "--json", "--profile", "free", env=env))
    assert list(out) == ["free"] and out["free"]["starts"], out


def test_launch_command_is_the_kernelspecs_launcher_on_a_harmless_command():
    from sandbox_kernel.install import kernel_argv

    argv = doctor.launch_command("offline")
    spec = kernel_argv("offline")
    assert argv[:3] == spec[:3] and "--connection-file" not in argv
    assert argv[argv.index("--"):][:3] == ["--", sys.executable, "-c"]


@pytest.mark.kernel
def test_inside_a_kernel_it_does_not_try(shared_kernels):
    k = shared_kernels("free")
    out = k.ok("!sandbox-kernel doctor").stdout
    assert "profiles on this host: not tried (inside a sandbox" in out, out
    out = json.loads(k.ok("!sandbox-kernel doctor --json").stdout)
    assert out["profiles"] is None and out["profiles_not_tried"] == "inside a sandbox"
    assert out["server"] is None  # the server's Python is judged outside the sandbox only
    assert out["layers"]["seccomp"]["state"] == "active"


@pytest.mark.parametrize("var,value", [("SANDBOX_KERNEL_LAYERS", "[1"), ("SANDBOX_KERNEL_LAYERS", "[1]"),
                                       ("SANDBOX_KERNEL_HANDOFF", "[1"),
                                       ("SANDBOX_KERNEL_HANDOFF", '{"gpu_tools": [1]}'),
                                       ("SANDBOX_KERNEL_POLICY", "{}"), ("SANDBOX_KERNEL_POLICY", '"x"')])
@pytest.mark.kernel
def test_inside_a_kernel_a_tampered_environment_is_named_not_a_traceback(shared_kernels, who, var, value):
    """Tenant code can set what a child's doctor reads: it says which variable, never a traceback. (A
    Python child with a tampered SANDBOX_KERNEL_POLICY is stopped earlier by the guard hook: exit 70.)"""
    k = shared_kernels("free", who)
    r = k.ok(f"import os, subprocess, sys\nenv = dict(os.environ, {var}={value!r})\n"
             "p = subprocess.run(['sandbox-kernel', 'doctor', '--no-try'], env=env, capture_output=True, text=True)\n"
             "print(p.returncode, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else '')")
    code, _, last = r.stdout.strip().partition(" ")
    assert "Traceback" not in r.stdout
    if var == "SANDBOX_KERNEL_POLICY":
        assert code == "70" and "cannot arm the import guard" in last, r.stdout
    else:
        assert code == "1" and f"{var} in this environment is not what the launcher writes" in last, r.stdout


SERVER_PTH = "import os; os.environ.get('SBX_DOCTOR_MARK') and open(os.environ['SBX_DOCTOR_MARK'], 'a').write('ran\\n')\n"


@pytest.mark.parametrize("how", ["plain", "PYTHONNOUSERSITE", "-s", "venv"])
def test_a_server_python_that_runs_the_user_site_is_flagged_with_the_fix(tmp_path, who, how):
    """The Jupyter server runs outside the sandbox as the tenant: where its Python runs the user
    site (a conda-like interpreter that is not a venv: here the base interpreter, with this
    environment's packages on PYTHONPATH), a .pth file a tenant planted there runs in it. doctor,
    run in the server's environment, says so and names the fix; configured as documented
    (PYTHONNOUSERSITE=1, or `python -s`), or in a venv without system site packages, the plant
    does not run and doctor says the server is fine."""
    if who is not None:
        tmp_path = kernelutil.Path(kernelutil.user_workdir(who))  # reachable by the user
    home = tmp_path / "home"
    user_site = home / ".local" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    user_site.mkdir(parents=True)
    (user_site / "zz-tenant.pth").write_text(SERVER_PTH)
    mark = tmp_path / "mark"
    if who is not None:
        for root, dirs, files in os.walk(tmp_path):
            for n in dirs + files + [""]:
                os.chown(os.path.join(root, n), who.pw_uid, who.pw_gid)
        os.chmod(tmp_path, 0o755)
    import sysconfig

    python = sys.executable if how == "venv" else sys._base_executable
    env = {"HOME": str(home), "SBX_DOCTOR_MARK": str(mark)}
    if how != "venv":
        env["PYTHONPATH"] = os.pathsep.join([sysconfig.get_paths()["purelib"], str(REPO)])
    if how == "PYTHONNOUSERSITE":
        env["PYTHONNOUSERSITE"] = "1"
    argv = [python] + (["-s"] if how == "-s" else []) + ["-m", "sandbox_kernel.cli", "doctor", "--json", "--no-try"]
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONNOUSERSITE", "PYTHONPATH")}
    run_env.update(env)
    if who is not None:
        argv = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--"] + argv
        run_env.update(USER=who.pw_name, LOGNAME=who.pw_name)
        run_env.pop("TMPDIR", None)
    p = subprocess.run(argv, capture_output=True, text=True, env=run_env, cwd=str(tmp_path), timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    server = json.loads(p.stdout)["server"]
    planted_ran = mark.exists()
    if how == "plain":
        assert planted_ran, "the base interpreter should run the user site here (the attack this check is about)"
        assert not server["ok"] and server["runs_user_site"] and "PYTHONNOUSERSITE=1" in server["fix"], server
        assert server["user_site"] == str(user_site), server
    else:
        assert not planted_ran, f"{how}: the planted .pth ran"
        assert server["ok"] and not server["runs_user_site"] and server["fix"] == "", server


@pytest.mark.kernel
def test_the_jupyter_server_above_doctor_is_judged_too(tmp_path):
    """Run from under a Jupyter server (a terminal of it), doctor also judges that server
    process: here a conda-like server Python without PYTHONNOUSERSITE, while doctor itself
    runs with it set."""
    import sysconfig

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONNOUSERSITE", "PYTHONPATH")}
    env.update(HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([sysconfig.get_paths()["purelib"],
                                                               str(REPO)]))
    child = [sys._base_executable, "-m", "sandbox_kernel.cli", "doctor", "--json", "--no-try"]
    server = ("import os, subprocess, sys; env = dict(os.environ, PYTHONNOUSERSITE='1'); "
              f"sys.stdout.write(subprocess.run({child!r}, env=env, capture_output=True, text=True).stdout)")
    p = subprocess.run([sys._base_executable, "-c", server, "jupyter-lab"], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=300)
    out = json.loads(p.stdout)["server"]
    assert not out["runs_user_site"], out  # doctor's own Python: PYTHONNOUSERSITE
    assert out["server"]["runs_user_site"] and "not a virtual environment" in out["server"]["why"], out
    assert not out["ok"] and "PYTHONNOUSERSITE=1" in out["fix"], out


def _proc_int(path: str) -> int:
    with open(path) as fh:
        return int(fh.read())


def test_says_which_per_kernel_counters_this_host_gives(who):
    """doctor names the per-kernel counters this host gives kernels of this uid (a user
    namespace of their own), and how many kernels of one uid the host's per-uid limits hold
    at the profile's shares."""
    p = sk("doctor", "--json", "--no-try", "--profile", "base", user=who)
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)["machine"]["counters"]
    assert c["user_namespace"] is True, c
    want = {"inotify_instances", "inotify_watches", "message_queues", "pending_signals"}
    assert set(c["per_kernel"]) == want | (set() if who is None else {"processes"}), c
    host = _proc_int("/proc/sys/fs/inotify/max_user_instances")
    assert c["fits"]["inotify_instances"] == {"host": host, "host_setting": "fs.inotify.max_user_instances",
                                              "share": 16, "kernels": host // 16}, c
    text = sk("doctor", "--no-try", "--profile", "base", user=who).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("per-uid counters:"))
    assert "user namespaces: yes" in line and f"fs.inotify.max_user_instances={host}: {host // 16} kernel(s)" in line
    assert ("RLIMIT_NPROC does not bind root" in line) == (who is None), line


@pytest.mark.skipif(not IS_ROOT, reason="simulating a container needs root (mount namespace, setpriv)")
def test_says_when_kernels_share_the_uids_counters():
    """In Docker's default shape (its seccomp profile refuses user namespaces) doctor says that
    kernels of the uid share its counters."""
    p = sk("doctor", "--json", "--no-try", "--profile", "base", prefix=docker_prefix())
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)["machine"]["counters"]
    assert c["user_namespace"] is False and c["user_namespace_error"] == "Operation not permitted", c
    assert c["per_kernel"] == [], c
    text = sk("doctor", "--no-try", "--profile", "base", prefix=docker_prefix()).stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("per-uid counters:"))
    assert "user namespaces: NO (Operation not permitted)" in line and "share its inotify" in line, line

@pytest.mark.kernel
def test_the_platforms_own_profiles_are_tried_and_a_refusal_is_the_exit_status(tmp_path):
    """Every profile on the search path is tried (SANDBOX_KERNEL_PROFILE_PATH's too, not only
    the shipped ones), and a refused one makes doctor exit 1, with and without --json, so a
    health check need not parse the report. One that starts keeps the exit status 0."""
    d = tmp_path / "platform"
    d.mkdir()
    (d / "acme.yaml").write_text("extends: free\ndescription: the platform's\n")
    env = {"SANDBOX_KERNEL_PROFILE_PATH": str(d)}
    p = sk("doctor", "--json", env=env)
    out = verdicts(p, rc=0)
    assert set(out) == set(SHIPPED) | {"acme"} and out["acme"]["starts"], out
    # a platform profile that cannot start here: its audit log's directory does not exist
    (d / "broken.yaml").write_text(f"extends: free\naudit:\n  log: {tmp_path}/no/such/dir/audit.log\n")
    out = verdicts(sk("doctor", "--json", env=env), rc=1)
    assert not out["broken"]["starts"] and "audit.log" in out["broken"]["why"], out["broken"]
    assert all(t["starts"] for n, t in out.items() if n != "broken"), out
    p = sk("doctor", env=env)
    assert p.returncode == 1 and "would not start here: broken" in p.stderr, p.stderr
    assert "broken" in p.stdout and "REFUSED" in p.stdout, p.stdout


def test_not_trying_is_not_a_refusal():
    p = sk("doctor", "--no-try", env={"SANDBOX_KERNEL_SIMULATE_MISSING": "landlock"})
    assert p.returncode == 0 and "not tried (--no-try" in p.stdout, p.stderr


@pytest.mark.kernel
def test_the_exit_statuses_are_documented():
    p = sk("doctor", "--help")
    assert "every profile on the search path" in " ".join(p.stdout.split())
    assert "1    a profile tried would not start" in p.stdout, p.stdout


@pytest.mark.kernel
@pytest.mark.parametrize("simulated", [False, True])
def test_says_whether_the_host_has_mount_setattr_and_the_layer_agrees(make_kernel, simulated):
    """doctor says whether mount_setattr(2) is there for the mount_namespace layer's read-only
    view of / (hard either way) and what the fallback is; a kernel started on the same host and
    environment built its view the way doctor said."""
    env = {"SANDBOX_KERNEL_SIMULATE_MISSING": "mount_setattr"} if simulated else {}
    p = sk("doctor", "--json", "--no-try", "--profile", "base", env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    fact = json.loads(p.stdout)["machine"]["mount_setattr"]
    line = next(ln for ln in sk("doctor", "--no-try", "--profile", "base", env=env).stdout.splitlines()
                if ln.startswith("mount_setattr:"))
    assert "mount_namespace" in line and "hard" in line, line
    if simulated:
        assert fact == {"available": False, "error": "not available (simulated)", "fallback": "bind remounts"}, fact
        assert line.startswith("mount_setattr: NO (not available (simulated))") and "bind remount" in line, line
    else:
        release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
        # (the test host runs doctor under no seccomp filter: from 5.12 on, the call is there)
        if release >= (5, 12):
            assert fact == {"available": True, "error": None, "fallback": None}, fact
        else:
            assert fact["available"] is False and fact["error"].startswith("ENOSYS"), fact
        assert line.startswith("mount_setattr: yes" if fact["available"] else "mount_setattr: NO"), line
    k = make_kernel("free", env=env)
    detail = k.ok("import json, os; print(json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['mount_namespace'])").stdout
    how = "mount_setattr" if fact["available"] else "bind remounts"
    assert f"/ read-only ({how})" in detail, detail


def test_a_program_tree_installed_since_install_is_named_with_the_fix(tmp_path):
    """install stores the scan of packages' program trees (/usr/lib/jvm/*/bin, /opt/*/bin) and of
    programs kept elsewhere (/usr/lib/chromium/chromium) in the kernelspec's policy cache; one installed since is not mounted noexec until install runs
    again. doctor rescans and names it, and the fix (with and without --json); after a new
    install, nothing. (A tree installed since is simulated by the list as install would have
    written it before: without the first directory the scan finds here.)"""
    from sandbox_kernel.layers import program_trees
    from sandbox_kernel.policy_cache import FILE_NAME

    found = program_trees.current()
    dirs = program_trees.scan()
    if not dirs or dirs == found:
        pytest.skip("no bin directory of a package's tree, or no program elsewhere, here")
    prefix = tmp_path / "prefix"
    env = {"JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    assert sk("install", "--profile", "free", "--prefix", str(prefix), env=env).returncode == 0
    cache = prefix / "share" / "jupyter" / "kernels" / "sandbox-free" / FILE_NAME

    def stale():
        p = sk("doctor", "--json", "--no-try", "--profile", "free", env=env)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        check = json.loads(p.stdout)["program_trees"]
        assert check["dirs"] == found, check
        return [s for s in check["stale"] if s["kernelspec"] == "sandbox-free"], check["fix"]

    assert stale() == ([], "")
    data = json.loads(cache.read_text())
    data["programs"]["dirs"].remove(found[0])
    program = data["programs"]["files"]["paths"].pop()  # a program kept elsewhere (layers/program_files.py)
    cache.write_text(json.dumps(data))
    entries, fix = stale()
    assert entries == [{"kernelspec": "sandbox-free", "policy_cache": str(cache), "appeared": [found[0], program]}], \
        entries
    assert "sandbox-kernel install" in fix, fix
    lines = [ln for ln in sk("doctor", "--no-try", "--profile", "free", env=env).stdout.splitlines()
             if ln.startswith("program trees:")]
    assert any("STALE: kernelspec sandbox-free" in ln and found[0] in ln for ln in lines), lines
    assert any(ln.startswith("program trees: fix: run `sandbox-kernel install`") for ln in lines), lines
    assert sk("install", "--profile", "free", "--prefix", str(prefix), env=env).returncode == 0
    assert stale() == ([], "")


def test_kernelspecs_whose_namespace_init_is_python_are_named(tmp_path, monkeypatch):
    """doctor's kernelspec check names each installed kernelspec without sandbox-kernel-init
    (install found no C compiler): its kernels' PID namespace init is the launcher's Python."""
    import shutil

    from sandbox_kernel import doctor, init_helper

    if init_helper.compiler() is None:
        pytest.skip("no C compiler here")
    prefix = tmp_path / "prefix"
    env = {"JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    assert sk("install", "--profile", "free", "--prefix", str(prefix), env=env).returncode == 0
    assert sk("install", "--profile", "offline", "--prefix", str(prefix), env=env).returncode == 0
    (prefix / "share" / "jupyter" / "kernels" / "sandbox-offline" / init_helper.FILE_NAME).unlink()
    monkeypatch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
    check = doctor.kernelspec_check()
    assert {"sandbox-free", "sandbox-offline"} <= set(check["installed"])
    assert "sandbox-offline" in check["python_init"] and "sandbox-free" not in check["python_init"]
    line = next(x for x in doctor.kernelspec_lines(check) if "namespace init in Python" in x)
    assert "sandbox-offline" in line and "sandbox-free" not in line and "apt-get install gcc" in line
    assert check["old_init"] == []
    # a helper an older install built (no READY_FD: init_helper.takes_ready_fd) is named too
    old = prefix / "share" / "jupyter" / "kernels" / "sandbox-free" / init_helper.FILE_NAME
    old.write_bytes(b"\x7fELF usage: sandbox-kernel-init KERNEL_PID")
    check = doctor.kernelspec_check()
    assert check["old_init"] == ["sandbox-free"], check
    line = next(x for x in doctor.kernelspec_lines(check) if "built by an older install" in x)
    assert "sandbox-free" in line and "sandbox-kernel install" in line
    shutil.rmtree(prefix)
