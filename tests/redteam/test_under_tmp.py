"""What lies under /tmp: every profile gives the kernel a private /tmp,
which hid a checkout and its .venv cloned into /tmp (the kernel could not even start), and
with $HOME or the working directory under /tmp the protected paths inside them lost their
protection (a shadow kernelspec written from a cell ran unconfined at the next start). And
with the tenant's $HOME inside the directory that holds the connection files (a shared
scratch space), one kernel read another's connection file.

The environment, this package, the kernelspec and profile directories are brought back into
the private view read-only, $HOME and the working directory as the profile says (writable),
with their protected paths read-only mounts; a directory holding connection files is covered
whatever lies inside it, with the tenant's own writable directories brought back. Through
real kernels, as root and as an ordinary user; each effect is checked from the host."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from rtutil import attempt, probe, start, stop, tenant_venv

pytestmark = pytest.mark.redteam


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _own(path: str, who) -> None:
    if who is not None:
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), who.pw_uid, who.pw_gid)
        os.lchown(path, who.pw_uid, who.pw_gid)


def _tmpdir(prefix: str, who=None, base: str = "/tmp") -> str:
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(d, 0o755)
    _own(d, who)
    return d


CONFINED = r"""
import os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
rt_out({"seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
        "layers": sorted(__import__("json").loads(os.environ["SANDBOX_KERNEL_LAYERS"]))})
"""


def _assert_confined(k) -> None:
    res = probe(k, CONFINED)
    assert res["seccomp"] == "2" and res["nnp"] == "1", res
    assert "mount_namespace" in res["layers"] and "landlock" in res["layers"], res


@pytest.fixture(scope="module")
def tmp_env(mwho):
    """An environment under /tmp (root-owned, as a checkout's .venv cloned into /tmp), with a
    kernelspec inside it, and a kernel running from it."""
    parent = _tmpdir("sbx-tmpenv-")
    py = tenant_venv(parent, None)
    prefix = os.path.dirname(os.path.dirname(py))
    spec = os.path.join(prefix, "share", "jupyter", "kernels", "sandbox-free", "kernel.json")
    os.makedirs(os.path.dirname(spec))
    Path(spec).write_text(json.dumps({"argv": ["python"], "display_name": "planted?", "language": "python"}))
    for root, dirs, _files in os.walk(parent):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
    k = None
    try:
        k = start("free", mwho, python=py, spec_suffix="-tmpenv")
        yield {"kernel": k, "python": py, "prefix": prefix, "spec": spec}
    finally:
        if k is not None:
            stop(k)
        shutil.rmtree(parent, ignore_errors=True)


@attempt("mount_namespace")
def test_environment_under_tmp_runs_and_stays_read_only(tmp_env):
    """A kernel whose interpreter, environment and kernelspec lie under /tmp starts, runs a cell
    and is confined; its environment (site-packages, bin) and kernelspec cannot be changed."""
    k = tmp_env["kernel"]
    _assert_confined(k)
    spec, prefix = tmp_env["spec"], tmp_env["prefix"]
    before = {p: _digest(p) for p in (spec,)}
    sp = next(Path(prefix, "lib").glob("python3*/site-packages"))
    res = probe(k, f"""
        import os, sys
        res = {{"prefix": sys.prefix, "spec_read": rt_try(lambda: open({spec!r}).read() and None)}}
        res["spec"] = rt_try(lambda: rt_write({spec!r}, "{{}}"))
        res["pth"] = rt_try(lambda: rt_write({str(sp / "rt-planted.pth")!r}, "import os"))
        res["bin"] = rt_try(lambda: rt_write({os.path.join(prefix, "bin", "rt-planted")!r}, "#!/bin/sh"))
        res["chmod"] = rt_try(lambda: os.chmod({tmp_env["python"]!r}, 0o4755))
        rt_out(res)
        """)
    assert res["prefix"] == prefix and res["spec_read"] == "ok", res
    assert {p: _digest(p) for p in before} == before, res
    assert not (sp / "rt-planted.pth").exists() and not os.path.exists(os.path.join(prefix, "bin", "rt-planted")), res


@attempt("mount_namespace")
def test_shadow_kernelspec_with_home_and_cwd_under_tmp(kernels, who):
    """$HOME and the working directory under /tmp: the tenant writes its files there (on the
    host), but a shadow kernelspec in $HOME, Jupyter's config, a kernelspec directory and a
    profile directory in the working directory (JUPYTER_PATH, SANDBOX_KERNEL_PROFILE_PATH) stay
    read-only (a profile directory an ordinary user can write is refused by the trusted start
    instead); the next start is confined."""
    home, cwd = _tmpdir("sbx-tmphome-", who), _tmpdir("sbx-tmpcwd-", who)
    targets = {
        "home_spec": os.path.join(home, ".local/share/jupyter/kernels/sandbox-free/kernel.json"),
        "home_config": os.path.join(home, ".jupyter/jupyter_server_config.py"),
        "cwd_spec": os.path.join(cwd, "jp/kernels/sandbox-free/kernel.json"),
        "cwd_profile": os.path.join(cwd, "profiles/rt-other.yaml"),
    }
    if who is not None:  # a profile directory an ordinary user can write is refused by the trusted start
        del targets["cwd_profile"]
    for p in targets.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Path(p).write_text("extends: free\n" if p.endswith(".yaml") else "{}\n")
    _own(home, who)
    _own(cwd, who)
    env = {"HOME": home, "JUPYTER_PATH": os.path.join(cwd, "jp") + os.pathsep + os.environ["JUPYTER_PATH"]}
    if "cwd_profile" in targets:
        env["SANDBOX_KERNEL_PROFILE_PATH"] = (os.path.join(cwd, "profiles") + os.pathsep
                                              + os.environ["SANDBOX_KERNEL_PROFILE_PATH"])
    before = {p: _digest(p) for p in targets.values()}
    try:
        k = kernels("free", who, cwd=cwd, env=env, spec_suffix="-tmphome")
        res = probe(k, f"""
            import os
            targets = {targets!r}
            res = {{name: rt_try(lambda p=p: rt_write(p, '{{"argv": ["/bin/sh"]}}')) for name, p in targets.items()}}
            res.update({{name + "_new": rt_try(lambda p=p: rt_write(os.path.join(os.path.dirname(p), "evil.json"), "x"))
                        for name, p in targets.items()}})
            res["home_file"] = rt_try(lambda: rt_write(os.path.expanduser("~/rt-notes.txt"), "mine"))
            res["cwd_file"] = rt_try(lambda: rt_write("rt-notes.txt", "mine"))
            rt_out(res)
            """)
        assert {p: _digest(p) for p in targets.values()} == before, res
        for p in targets.values():
            assert not os.path.exists(os.path.join(os.path.dirname(p), "evil.json")), res
        # the tenant's own files land in its (host) directories
        assert res["home_file"] == res["cwd_file"] == "ok", res
        assert Path(home, "rt-notes.txt").read_text() == "mine" and Path(cwd, "rt-notes.txt").read_text() == "mine"
        k2 = kernels("free", who, cwd=cwd, env=env, spec_suffix="-tmphome2")
        _assert_confined(k2)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)


@attempt("mount_namespace")
def test_read_other_kernels_connection_file_in_shared_scratch(kernels, who):
    """Connection files in a shared scratch directory that also holds the tenants' homes
    (/scratch/kernel-*.json, HOME=/scratch/<user>): kernel A sees its own connection file and
    its home there, never kernel B's connection file (its HMAC key)."""
    scratch = _tmpdir("sbx-scratch-", base="/var/tmp")
    home = os.path.join(scratch, "tenant")
    os.mkdir(home)
    _own(home, who)
    env = {"HOME": home}
    try:
        b = kernels("free", who, env=env, connection_dir=scratch, spec_suffix="-scratchB")
        a = kernels("free", who, env=env, connection_dir=scratch, spec_suffix="-scratchA")
        key = json.loads(Path(b.km.connection_file).read_text())["key"]
        res = probe(a, f"""
            import os
            res = {{"listing": rt_try(lambda: sorted(os.listdir({scratch!r})))}}
            res["other"] = rt_try(lambda: open({b.km.connection_file!r}).read())
            res["own"] = rt_try(lambda: len(open({a.km.connection_file!r}).read()) > 0)
            res["home"] = rt_try(lambda: rt_write(os.path.expanduser("~/rt-notes.txt"), "mine"))
            rt_out(res)
            """)
        assert key not in json.dumps(res), "kernel A read kernel B's key"
        assert res["other"] in ("ENOENT", "EACCES"), res
        assert res["own"] is True and res["home"] == "ok", res
        assert os.path.basename(b.km.connection_file) not in res["listing"], res
        assert Path(home, "rt-notes.txt").read_text() == "mine"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
