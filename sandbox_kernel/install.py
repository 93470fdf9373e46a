"""Kernelspecs (one per tenant profile) and the child-process guard hook."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from . import init_helper, policy_cache, resources
from .errors import ProfileError, SandboxError
from .policy import find_profile, is_path_like, list_profiles, resolve
from .profile_files import PROFILE_PATH_ENV, profile_stem, profiles_in

KERNEL_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")  # what jupyter_client accepts


def launch_argv(profile: str, python: str | None = None, *, connection_file: str | None = None,
                policy_cache_file: str | None = None) -> list[str]:
    """The trusted start of the launcher (see boot.py): ``python -I -S boot.py run ...``.

    ``-I -S``: no site, so no .pth file, sitecustomize or user site runs before the
    layers apply; boot.py makes only the standard library and this package importable.
    """
    argv = [python or sys.executable, "-I", "-S", os.path.join(resources.PACKAGE_DIR, "boot.py"), "run", "--profile", profile]
    if connection_file:
        argv += ["--connection-file", connection_file]
    if policy_cache_file:
        argv += ["--policy-cache", policy_cache_file]
    return argv


def kernel_argv(profile: str, python: str | None = None) -> list[str]:
    """The launcher applies every layer, then execs the kernel's interpreter.

    The kernel runs with ``-P`` (3.11+; ``-I`` on 3.10) so a ``sandbox_kernel`` directory
    in the working directory cannot replace the package.
    """
    python = python or sys.executable
    safe = "-P" if sys.version_info >= (3, 11) else "-I"
    return launch_argv(profile, python, connection_file="{connection_file}",
                       policy_cache_file="{resource_dir}/" + policy_cache.FILE_NAME) + [
        "--", python, safe, "-m", "sandbox_kernel", "-f", "{connection_file}", "--profile", profile]


def installed_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The kernelspec's ``env``: the profile search path the profile was installed with.

    A profile found through ``SANDBOX_KERNEL_PROFILE_PATH`` must start from a Jupyter
    server that does not have the variable: the kernelspec carries it (as absolute
    directories: a kernel starts in the notebook's directory), and Jupyter sets it for
    the launcher. The launcher checks those directories at each start exactly as when
    the variable comes from the server (trusted_start: none may be writable by the
    tenant; the mount namespace or Landlock keeps them read-only inside the sandbox), and
    on a validated-policy cache miss resolves the profile from them.
    """
    env = os.environ if env is None else env
    dirs = [os.path.abspath(os.path.expanduser(d)) for d in env.get(PROFILE_PATH_ENV, "").split(":") if d]
    return {PROFILE_PATH_ENV: ":".join(dict.fromkeys(dirs))} if dirs else {}


def kernel_spec(profile: str, display_name: str | None = None, pool: int = 0) -> dict:
    """kernel.json for `profile`; with `pool` > 0 its kernels come from a warm pool of that many per
    request key (the `sandbox-pool` provisioner, sandbox_kernel/pool.py, docs/pool.md)."""
    policy = resolve(profile)  # validates; a broken profile is never installed
    spec = {
        "argv": kernel_argv(profile),
        "display_name": display_name or f"Python 3 (sandbox: {profile})",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "sandbox_kernel": {"profile": profile, "description": policy.data.get("description", "")},
            "debugger": policy.network["mode"] == "full" and policy.network.get("listen_ports") == "any",
        },
    }
    if env := installed_env():
        spec["env"] = env
    if pool:
        spec["metadata"]["kernel_provisioner"] = {"provisioner_name": "sandbox-pool", "config": {"pool_size": pool}}
    return spec


def slurm_spec(name: str, spec: dict, config: dict, *, named: bool = False,
               display_name: str | None = None) -> tuple[str, dict]:
    """The kernelspec `spec` run as a Slurm job: its metadata names the Slurm provisioner
    (sandbox_kernel/slurm_provisioner.py) with `config` (partition, mem, cpus, ...)."""
    from .slurm_provisioner import PROVISIONER_NAME

    spec = json.loads(json.dumps(spec))
    spec["metadata"]["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME, "config": dict(config)}
    # Slurm signals only a step's task (the launcher's supervisor) with anything but SIGKILL, so an
    # interrupt goes to the kernel as a message (ipykernel's interrupt_request) instead
    spec["interrupt_mode"] = "message"
    where = config.get("partition") or "default partition"
    if not display_name:
        spec["display_name"] = spec["display_name"][:-1] + f", Slurm: {where})"
    return (name if named else name + "-slurm"), spec


def install_hook() -> str:
    """Install (or refresh) sandbox_kernel_guard.pth in this environment's site-packages."""
    src, dst = Path(resources.guard_hook_source()), Path(resources.guard_hook_path())
    if src.resolve() != dst.resolve() and not (dst.exists() and filecmp.cmp(src, dst, shallow=False)):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return str(dst)


def compile_package() -> bool:
    """Write the package's bytecode (``__pycache__``) where it is missing or stale.

    Kernels cannot write it themselves (the package directory is read-only inside the
    sandbox), so without it every kernel and every guarded child interpreter compiles
    kernel.py, precheck.py, guard.py, ... from source at each start (about 20 ms on a
    2-core machine). pip writes it when it installs a wheel; an editable install does not.
    False where the directory is not writable by the installer (nothing else changes).
    """
    import compileall

    return bool(compileall.compile_dir(resources.PACKAGE_DIR, quiet=2))


def profile_label(profile: str) -> str:
    """The short name of a profile given by name or by file (``/x/lab.yaml`` -> ``lab``)."""
    return profile_stem(profile) if is_path_like(profile) else profile


def prepare(profile: str, *, name: str | None = None, display_name: str | None = None,
            pool: int = 0) -> tuple[str, dict]:
    """Check everything an install needs, touching nothing: (kernelspec name, kernel.json).

    A profile given as a file is written into the kernelspec as an absolute path: the
    kernel starts in the notebook's directory, where a relative path means nothing.
    """
    if is_path_like(profile):
        profile = find_profile(profile)
    label = profile_label(profile)
    name = name or f"sandbox-{label}"
    if not KERNEL_NAME_RE.fullmatch(name):
        raise SandboxError(f"invalid kernelspec name {name!r}: use ASCII letters, digits, '-', '.' and '_'")
    if not isinstance(pool, int) or pool < 0:
        raise SandboxError(f"--pool {pool!r}: give the number of kernels to keep ready (0 or more)")
    spec = kernel_spec(profile, display_name or f"Python 3 (sandbox: {label})", pool=pool)
    return name.lower(), spec


def install(profile: str, *, name: str | None = None, display_name: str | None = None, user: bool = False,
            prefix: str | None = None, pool: int = 0) -> str:
    name, spec = prepare(profile, name=name, display_name=display_name, pool=pool)
    return install_prepared(name, spec, user=user, prefix=prefix)


def install_prepared(name: str, spec: dict, *, user: bool = False, prefix: str | None = None) -> str:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "kernel.json"), "w") as fh:
                json.dump(spec, fh, indent=1)
            policy_cache.write(os.path.join(tmp, policy_cache.FILE_NAME), cacheable_profiles(spec))
            for logo in Path(resources.kernelspec_template_dir()).glob("logo-*"):
                shutil.copy(logo, tmp)
            # install_kernel_spec copies modes: a 0700 temporary directory would hide the
            # kernelspec from every other user's Jupyter server (nothing in it is secret)
            os.chmod(tmp, 0o755)
            for f in os.listdir(tmp):
                os.chmod(os.path.join(tmp, f), 0o644)
            init_helper.build(tmp)  # the namespace's init in C where a compiler is here (else Python's runs)
            return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)
    except OSError as e:
        where = "--prefix " + prefix if prefix else "the user's Jupyter directory" if user else "the system Jupyter directory"
        raise SandboxError(f"cannot install kernelspec {name!r} into {where}: {e.strerror or e} "
                           "(use --user, --sys-prefix or --prefix DIR)") from None


def cacheable_profiles(spec: dict) -> list[str]:
    """The kernelspec's profile and every valid profile on the search path (a ceiling may name any)."""
    own = spec["metadata"]["sandbox_kernel"]["profile"]
    names = [own] + [n for n, _ in list_profiles() if n != own]
    ok = []
    for n in names:
        try:
            resolve(n)
            ok.append(n)
        except ProfileError:
            continue  # not cached: the launcher reports its errors when it is used
    return ok


def invalid_profiles() -> list[tuple[str, str, ProfileError]]:
    """(name, file, error) of each profile on the search path that does not resolve."""
    out = []
    for name, file in list_profiles():
        try:
            resolve(name)
        except ProfileError as e:
            out.append((name, file, e))
    return out


def shipped_profile_names() -> list[str]:
    """The profiles shipped with the package, whether or not a directory on the search
    path shadows one of them (a shadowed name still gets its kernelspec)."""
    return [name for name, _ in profiles_in(resources.shipped_profiles_dir())]


def sandbox_kernelspecs(ksm: KernelSpecManager | None = None) -> list[tuple[str, str, dict]]:
    """(name, resource directory, kernel.json) of every installed kernelspec that starts the
    sandbox launcher (its argv runs a ``sandbox_kernel/boot.py``), in every Jupyter data
    directory this process sees."""
    try:
        specs = (ksm or KernelSpecManager()).get_all_specs()
    except Exception:  # unreadable Jupyter paths: nothing to judge
        return []
    out = []
    for name, info in sorted(specs.items()):
        spec = info.get("spec") or {}
        argv = spec.get("argv") or []
        if any(isinstance(a, str) and a.endswith(os.path.join("sandbox_kernel", "boot.py")) for a in argv):
            out.append((name, info.get("resource_dir", ""), spec))
    return out


def why_orphaned(spec: dict) -> tuple[str, str | None]:
    """A sandbox kernelspec's profile, and why its kernel would refuse to start whatever the host
    (None: it would not): its launcher is gone, or its profile no longer resolves on its search
    path (the environment's, with the kernelspec's env over it)."""
    argv = spec["argv"]
    boot = next(a for a in argv if isinstance(a, str) and a.endswith(os.path.join("sandbox_kernel", "boot.py")))
    at = argv.index("--profile") if "--profile" in argv else -1
    profile = argv[at + 1] if 0 <= at < len(argv) - 1 else "default"
    env = dict(os.environ)
    env.update({k: v for k, v in (spec.get("env") or {}).items() if isinstance(v, str)})
    if not os.path.isfile(boot):
        return profile, (f"its launcher {boot} no longer exists (the environment it was installed from was removed "
                         f"or moved)")
    try:
        resolve(profile, env)
    except ProfileError as e:
        f, key, message = e.problems[0]
        return profile, (f"its profile {profile!r} no longer exists on its search path: {message}"
                         if not key and message.startswith(("no such profile", "profile file not found")) else
                         f"its profile {profile!r} is now invalid: {f}: {key + ': ' if key else ''}{message}")
    return profile, None


def orphaned_kernelspecs(ksm: KernelSpecManager | None = None) -> list[dict]:
    """The sandbox kernelspecs whose kernel would refuse to start whatever the host: the profile
    they name no longer exists on their search path (the server's SANDBOX_KERNEL_PROFILE_PATH,
    or the one the kernelspec carries in its env) or is now invalid, or their launcher
    (boot.py) is gone. Jupyter still offers them; opening one gives the refusal kernel's
    message. Each: kernelspec, resource_dir, display_name, profile, why, fix."""
    out = []
    for name, resource_dir, spec in sandbox_kernelspecs(ksm):
        profile, why = why_orphaned(spec)
        if why:
            out.append({"kernelspec": name, "resource_dir": resource_dir, "display_name": spec.get("display_name", ""),
                        "profile": profile, "why": why,
                        "fix": f"`jupyter kernelspec remove {name}`, or restore the profile and run "
                               f"`sandbox-kernel install --profile {profile}` again"})
    return out
