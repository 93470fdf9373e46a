"""Next-start tampering: rewriting what the next kernel start trusts (kernelspec, policy cache,
profiles, the package, the guard hook), shadowing the kernelspec in the tenant's Jupyter
dirs, and the neighbours (a hard link to a protected file, renaming a protected path's
parent). The effect is checked from outside: the file's bytes are unchanged, nothing was
created."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import kernelutil
import pytest
from rtutil import attempt, home_of, probe

from sandbox_kernel import policy_cache, resources

pytestmark = pytest.mark.redteam

LAYER = "landlock+mount_namespace"


def _targets(k, who) -> dict:
    spec_dir = kernelutil.SPECS / (kernelutil.spec_name(k.profile, k.user) + "-pool")
    home = home_of(who)
    return {
        "kernelspec": str(spec_dir / "kernel.json"),
        "kernelspec_dir_new_file": str(spec_dir / "evil.json"),
        "policy_cache": str(spec_dir / policy_cache.FILE_NAME),
        "profile_on_search_path": str(kernelutil.PROFILES / "redteam-evil.yaml"),
        "shipped_profile": os.path.join(resources.shipped_profiles_dir(), "free.yaml"),
        "package_module": os.path.join(resources.PACKAGE_DIR, "kernel.py"),
        "package_new_module": os.path.join(resources.PACKAGE_DIR, "sitecustomize.py"),
        "guard_hook": resources.guard_hook_path(),
        "shadow_kernelspec": os.path.join(home, ".local/share/jupyter/kernels/sandbox-free/kernel.json"),
        "jupyter_config": os.path.join(home, ".jupyter/jupyter_server_config.py"),
    }


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


@pytest.mark.parametrize("target", [
    pytest.param(t, marks=attempt(LAYER)) for t in
    ["kernelspec", "kernelspec_dir_new_file", "policy_cache", "profile_on_search_path", "shipped_profile",
     "package_module", "package_new_module", "guard_hook", "shadow_kernelspec", "jupyter_config"]])
def test_rewrite_what_the_next_start_trusts(pool, who, target):
    k = pool.get("free", who)
    path = _targets(k, who)[target]
    before = _digest(path)
    existed = os.path.exists(path)
    try:
        res = probe(k, f"""
            import os
            path = {path!r}
            def go():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a") as fh:
                    fh.write("\\n# redteam: tampered\\n")
            rt_out({{"write": rt_try(go)}})
            """)
        after = _digest(path)
        assert after == before, f"{target} ({path}) was changed from a cell: {res}"
    finally:
        if not existed and os.path.exists(path):
            os.unlink(path)
        elif existed and _digest(path) != before:
            pytest.fail(f"{path} was tampered with and must be restored by hand")


@attempt(LAYER)
@pytest.mark.covers("filesystem.protected")
def test_hard_link_to_protected_file_then_write(pool, who):
    """A hard link in a writable directory to the kernelspec or the guard hook: writing through
    the link would change the protected file (the link is outside the protected path)."""
    k = pool.get("free", who)
    targets = _targets(k, who)
    paths = [targets["kernelspec"], targets["guard_hook"], targets["policy_cache"]]
    before = {p: _digest(p) for p in paths}
    res = probe(k, f"""
        import os
        out = {{}}
        for i, p in enumerate({paths!r}):
            link = os.path.join(os.getcwd(), f"rt-link-{{i}}")
            out[p] = rt_try(lambda: os.link(p, link))
            if out[p] == "ok":
                out[p] = "linked, write: " + str(rt_try(lambda: open(link, "a").write("# tampered") and None))
                os.unlink(link)
        rt_out(out)
        """)
    assert {p: _digest(p) for p in paths} == before, f"a protected file changed through a hard link: {res}"


@attempt("mount_namespace")
def test_rename_parent_of_protected_dir_and_plant_kernelspec(pool, who):
    """Move ~/.local/share/jupyter aside and create a fresh kernels/ dir with a shadow spec."""
    k = pool.get("free", who)
    home = home_of(who)
    jdir = os.path.join(home, ".local/share/jupyter")
    shadow = os.path.join(jdir, "kernels/sandbox-redteam/kernel.json")
    res = probe(k, f"""
        import os
        jdir, moved = {jdir!r}, {jdir!r} + "-rt-moved"
        out = {{"rename": rt_try(lambda: os.rename(jdir, moved))}}
        def plant():
            os.makedirs(os.path.dirname({shadow!r}), exist_ok=True)
            open({shadow!r}, "w").write("{{}}")
        out["plant"] = rt_try(plant)
        if out["rename"] == "ok":  # put things back for the other tests
            import shutil
            shutil.rmtree(jdir, ignore_errors=True)
            os.rename(moved, jdir)
        rt_out(out)
        """)
    try:
        assert res["rename"] != "ok" and res["plant"] != "ok", res
    finally:
        if os.path.exists(shadow):
            shutil.rmtree(os.path.dirname(shadow), ignore_errors=True)


@attempt("mount_namespace")
def test_zipped_standard_library_above_the_interpreter(pool, who):
    """A `lib/pythonXY.zip` in a directory above the interpreter (pyenv or conda under a writable
    home): Python's start takes the first one it finds as its standard library, before its own,
    so the next start (launcher included) would run the tenant's code before any layer."""
    k = pool.get("free", who)
    landmarks = _zip_landmarks()
    existed = {p for p in landmarks + [os.path.dirname(p) for p in landmarks] if os.path.lexists(p)}
    try:
        res = probe(k, f"""
            import os
            out = {{}}
            for p in {landmarks!r}:
                def plant(p=p):
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    if os.path.isdir(p):  # the launcher's placeholder: try to move it away first
                        os.rename(p, p + ".rt-moved")
                    with open(p, "wb") as fh:
                        fh.write(b"PK\\x05\\x06" + bytes(18))  # an empty zip
                out[p] = rt_try(plant)
            rt_out(out)
            """)
        planted = [p for p in landmarks if os.path.isfile(p)]
        assert not planted, f"planted the next start's standard library at {planted}: {res}"
    finally:
        for p in landmarks:
            if p not in existed and os.path.isfile(p):
                os.unlink(p)  # the attack worked: undo it before any other Python starts
            if os.path.isdir(p + ".rt-moved"):
                os.rename(p + ".rt-moved", p)
            if os.path.dirname(p) not in existed and not os.path.lexists(p):
                try:
                    os.rmdir(os.path.dirname(p))  # a lib/ the attempt created
                except OSError:
                    pass


def _zip_landmarks() -> list[str]:
    """lib/pythonXY.zip in every directory from the (base) interpreter's up to /, as getpath
    searches them (written here on its own, as the attacker would)."""
    import sys

    name, out = f"python{sys.version_info[0]}{sys.version_info[1]}.zip", []
    for start in (os.path.dirname(os.path.realpath(sys.executable)), os.path.join(os.path.realpath(sys.base_prefix), "bin")):
        d = start
        while True:
            out.append(os.path.join(d, "lib", name))
            if d == "/":
                break
            d = os.path.dirname(d)
    return list(dict.fromkeys(out))
