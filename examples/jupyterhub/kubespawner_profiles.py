# JupyterHub on Kubernetes (KubeSpawner) with sandbox-kernel: server profiles per group.
#
# Use beside jupyterhub_config.py (whose pre_spawn_hook sets the ceiling):
#   jupyterhub -f kubespawner_profiles.py        # loads jupyterhub_config.py first
# With Zero to JupyterHub, put the body of both files in hub.extraConfig.
#
# The ceiling comes from the user's groups (the pre_spawn_hook), never from the profile
# the user picks: a profile chooses the image and resources, and a user is offered only
# the profiles of their groups (KubeSpawner checks the chosen slug against this same
# list, computed for that user, when the server starts). Do not add
# `profile_options` with `unlisted_choice` for the image: a free-form image is a
# kernel without the sandbox.
#
# The image: a notebook image with sandbox-kernel installed and its kernelspecs in
# the image's system Jupyter directory, e.g.
#   FROM quay.io/jupyter/base-notebook:python-3.11
#   USER root
#   RUN pip install --no-cache-dir sandbox-kernel==0.1.0 \
#    && sandbox-kernel install --all --sys-prefix
#   USER ${NB_UID}
# The container must let the launcher create its namespaces and apply Landlock and
# seccomp (docs/deploy-containers.md); a profile whose required layer the pod cannot
# give refuses to start the kernel and says which.

import os

c = get_config()  # noqa: F821 (provided by JupyterHub)
load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "jupyterhub_config.py"))  # noqa: F821

c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"

SANDBOX_IMAGE = os.environ.get("SANDBOX_NOTEBOOK_IMAGE", "registry.example.com/notebook-sandbox:0.1.0")

PROFILES = [
    {
        "display_name": "Exam (no network)",
        "slug": "exam",
        "groups": ["sandbox-exam"],
        "kubespawner_override": {"image": SANDBOX_IMAGE, "cpu_limit": 1, "mem_limit": "4G"},
    },
    {
        "display_name": "Free tier (CPU)",
        "slug": "free",
        "groups": ["sandbox-free"],
        "kubespawner_override": {"image": SANDBOX_IMAGE, "cpu_limit": 2, "mem_limit": "8G"},
    },
    {
        "display_name": "One GPU",
        "slug": "gpu",
        "groups": ["sandbox-gpu"],
        "kubespawner_override": {
            "image": SANDBOX_IMAGE,
            "cpu_limit": 8,
            "mem_limit": "64G",
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
        },
    },
    {
        "display_name": "Research (every GPU of the node)",
        "slug": "research",
        "groups": ["sandbox-research"],
        "kubespawner_override": {
            "image": SANDBOX_IMAGE,
            "cpu_limit": 32,
            "mem_limit": "256G",
            "extra_resource_limits": {"nvidia.com/gpu": "8"},
        },
    },
]


def profile_list(spawner):
    """The profiles of the user's JupyterHub groups; the exam profile when none matches."""
    groups = {g.name for g in spawner.user.groups}
    offered = [p for p in PROFILES if groups & set(p["groups"])] or [PROFILES[0]]
    # KubeSpawner reads only the keys it knows: drop our "groups"; the first offered is the default
    offered = [{k: v for k, v in p.items() if k not in ("groups", "default")} for p in offered]
    offered[0]["default"] = True
    return offered


c.KubeSpawner.profile_list = profile_list
