# JupyterHub with sandbox-kernel: every user's kernels are sandboxed, and each user's
# kernels are narrowed by a ceiling chosen from the user's groups.
#
# Set-up (on the host, as root; see docs/deploy-jupyterhub.md):
#   pip install sandbox-kernel jupyterhub jupyterlab          # in the environment users run
#   sandbox-kernel install --all --sys-prefix                 # kernelspecs, not writable by users
#   npm install -g configurable-http-proxy
#   jupyterhub -f jupyterhub_config.py
#
# The ceiling is an environment variable of the user's single-user server
# (SANDBOX_KERNEL_CEILING). Every kernel that server starts is the requested profile
# narrowed by it: a user of the exam group who picks "Python 3 (sandbox: research)"
# still gets no network. It is set here, by the Hub, before the server starts; the
# user never controls it (see "What the user can and cannot change" in the guide).
#
# This file is also what tests/deploy/test_jupyterhub.py runs (it adds only addresses, paths
# and its own test groups).

import grp
import os
import pwd

c = get_config()  # noqa: F821 (provided by JupyterHub)

# Which group gets which ceiling: the FIRST group of this list the user belongs to
# wins, so list the strictest first (a user in an exam group stays offline even if
# also in the research group). Users in none of these groups get DEFAULT_CEILING.
# Group names are JupyterHub groups and, where the user has a system account (PAM,
# LocalProcessSpawner), its Unix groups. Override without editing this file:
#   SANDBOX_CEILING_GROUPS="exam=offline,students=free,gpu-users=gpu,research=research"
SANDBOX_CEILING_GROUPS = os.environ.get(
    "SANDBOX_CEILING_GROUPS", "sandbox-exam=offline,sandbox-free=free,sandbox-gpu=gpu,sandbox-research=research")
DEFAULT_CEILING = os.environ.get("SANDBOX_DEFAULT_CEILING", "offline")  # fail closed: the strictest


def _ceiling_table():
    table = []
    for item in filter(None, (x.strip() for x in SANDBOX_CEILING_GROUPS.split(","))):
        group, sep, profile = item.partition("=")
        if not sep or not group.strip() or not profile.strip():
            raise ValueError(f"SANDBOX_CEILING_GROUPS: {item!r} is not GROUP=PROFILE "
                             "(e.g. SANDBOX_CEILING_GROUPS='exam=offline,students=free')")
        table.append((group.strip(), profile.strip()))
    return table


CEILINGS = _ceiling_table()  # a typo stops the Hub at start-up, not at a user's spawn


def user_groups(spawner):
    """JupyterHub groups of the user, plus the Unix groups of a system account of that name."""
    names = {g.name for g in spawner.user.groups}
    try:
        pw = pwd.getpwnam(spawner.user.name)
    except KeyError:
        return names
    for gid in os.getgrouplist(pw.pw_name, pw.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def sandbox_ceiling(groups):
    for group, profile in CEILINGS:
        if group in groups:
            return profile
    return DEFAULT_CEILING


def pre_spawn_hook(spawner):
    ceiling = sandbox_ceiling(user_groups(spawner))
    spawner.environment["SANDBOX_KERNEL_CEILING"] = ceiling
    spawner.log.info("sandbox-kernel: ceiling %r for user %s", ceiling, spawner.user.name)


c.Spawner.pre_spawn_hook = pre_spawn_hook

# The single-user server runs outside the sandbox, as the user, and starts the kernels: it
# must not run code the user can write. A server on a Python that is not a venv (conda's
# /opt/conda in the docker-stacks images) runs the user site at its start: .pth files and
# usercustomize in ~/.local/lib/pythonX.Y/site-packages, which kernels may write
# (`pip install --user`). PYTHONNOUSERSITE turns that off for the server and whatever it
# starts outside the sandbox; sandboxed kernels do not inherit it (they add the user site
# only under their last filter, so `pip install --user` keeps working in notebooks).
# disable_user_config keeps the server from reading ~/.jupyter and the kernelspecs in the
# user's home. `sandbox-kernel doctor`, run with the server's environment, checks the first.
c.Spawner.environment = {"PYTHONNOUSERSITE": "1"}
c.Spawner.disable_user_config = True

# JupyterLab, with terminals turned off: a terminal is a shell outside the kernel's
# sandbox. To offer terminals, run them through the launcher instead (README,
# "Terminals and batch jobs"), e.g. in the environment's jupyter_server_config.py:
#   c.ServerApp.terminado_settings = {"shell_command": [
#       "/opt/venv/bin/python", "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "free", "--",
#       "/bin/bash", "-l"]}
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--ServerApp.terminals_enabled=False"]
