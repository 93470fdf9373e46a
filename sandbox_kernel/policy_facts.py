"""Per-key policy facts, generated from profiles/schema.json (its x-layers, x-narrow, x-inherit
and the narrow kinds' parameters) by

    python -m sandbox_kernel.schema_doc --facts > sandbox_kernel/policy_facts.py

Do not edit: change the schema and regenerate (tests/policy/test_policy_facts.py checks it). A table and
not the schema itself, because the launcher narrows by a ceiling on its cache-hit path, where it
reads no JSON schema (standard library only, no file read).
"""


KEYS = {
    'extends': {'layers': (), 'inherit': 'none', 'narrow': 'none', 'size': False},
    'description': {'layers': (), 'inherit': 'replace', 'narrow': 'request', 'size': False, 'absent': ''},
    'enforcement.cgroup': {'layers': ('cgroup',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.pid_namespace': {'layers': ('pid_namespace',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.rlimits': {'layers': ('rlimits',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.mount_namespace': {'layers': ('mount_namespace',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.no_new_privs': {'layers': ('no_new_privs',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.capabilities': {'layers': ('capabilities',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.landlock': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.seccomp': {'layers': ('seccomp',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'enforcement.import_guard': {'layers': ('import_guard',), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('required', 'best-effort', 'off'), 'absent': 'required'},
    'imports.deny': {'layers': ('import_guard',), 'inherit': 'concatenate', 'narrow': 'union', 'size': False, 'identity': 'module', 'first': 'ceiling'},
    'imports.allow': {'layers': ('import_guard',), 'inherit': 'concatenate', 'narrow': 'intersection', 'size': False},
    'shell.deny': {'layers': ('import_guard',), 'inherit': 'concatenate', 'narrow': 'union', 'size': False, 'identity': 'pattern', 'first': 'ceiling'},
    'network.mode': {'layers': ('seccomp', 'landlock'), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('none', 'restricted', 'full')},
    'network.tcp_connect_ports': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'intersection', 'size': False, 'sides_where': {'network.mode': 'restricted'}, 'empty_unless': {'network.mode': ['restricted']}},
    'network.listen_ports': {'layers': ('seccomp', 'landlock', 'pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'intersection', 'size': False, 'absent': [], 'universal': 'any', 'empty_unless': {'network.mode': ['restricted', 'full']}},
    'network.udp': {'layers': ('seccomp',), 'inherit': 'replace', 'narrow': 'and', 'size': False, 'sides_where': {'network.mode': 'restricted'}, 'empty_unless': {'network.mode': ['restricted']}},
    'exec.allow': {'layers': ('landlock', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'intersection-paths', 'size': False},
    'filesystem.writable': {'layers': ('landlock', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'intersection-paths', 'size': False},
    'filesystem.readable': {'layers': ('mount_namespace', 'landlock'), 'inherit': 'replace', 'narrow': 'intersection-paths', 'size': False},
    'filesystem.protected': {'layers': ('landlock', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'union', 'size': False},
    'filesystem.noexec_writable': {'layers': ('mount_namespace',), 'inherit': 'replace', 'narrow': 'or', 'size': False},
    'filesystem.landlock_with_view': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'or', 'size': False},
    'filesystem.tmp_size': {'layers': ('mount_namespace',), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'filesystem.shm_size': {'layers': ('mount_namespace',), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'filesystem.home': {'layers': ('mount_namespace', 'landlock'), 'inherit': 'replace', 'narrow': 'ceiling', 'size': False},
    'filesystem.hidden': {'layers': ('mount_namespace', 'landlock'), 'inherit': 'concatenate', 'narrow': 'union', 'size': False},
    'capabilities.keep': {'layers': ('capabilities',), 'inherit': 'merge', 'narrow': 'intersection', 'size': False},
    'user_namespace.host_uid': {'layers': ('pid_namespace', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'stricter', 'size': False, 'order': ('subordinate', 'same'), 'absent': 'same'},
    'accelerators.gpu.enabled': {'layers': ('landlock', 'environment', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'and', 'size': False, 'absent': False, 'requires_same': ('device_pattern', 'caps_dir', 'capabilities_root')},
    'accelerators.gpu.devices': {'layers': ('landlock', 'environment'), 'inherit': 'replace', 'narrow': 'intersection', 'size': False, 'identity': 'device', 'universal': None, 'requires_same': ('device_pattern', 'caps_dir', 'capabilities_root')},
    'accelerators.gpu.memory_fraction': {'layers': ('import_guard',), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'accelerators.gpu.mps_memory_limit': {'layers': ('environment',), 'inherit': 'replace', 'narrow': 'min', 'size': False, 'compare': 'bytes'},
    'accelerators.gpu.device_pattern': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'request', 'size': False},
    'accelerators.gpu.shared_nodes': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'intersection', 'size': False},
    'accelerators.gpu.caps_dir': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'request', 'size': False},
    'accelerators.gpu.capabilities_root': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'request', 'size': False},
    'accelerators.gpu.tool_dirs': {'layers': ('landlock', 'mount_namespace'), 'inherit': 'replace', 'narrow': 'intersection', 'size': False},
    'accelerators.tpu.enabled': {'layers': ('landlock', 'import_guard', 'environment'), 'inherit': 'replace', 'narrow': 'and', 'size': False, 'absent': False, 'requires_same': ('device_pattern', 'vfio_pattern')},
    'accelerators.tpu.chips': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'intersection', 'size': False, 'identity': 'device', 'universal': None, 'requires_same': ('device_pattern', 'vfio_pattern')},
    'accelerators.tpu.device_pattern': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'request', 'size': False},
    'accelerators.tpu.vfio_pattern': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'request', 'size': False},
    'accelerators.tpu.shared_nodes': {'layers': ('landlock',), 'inherit': 'replace', 'narrow': 'intersection', 'size': False},
    'limits.memory': {'layers': ('rlimits', 'cgroup'), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'limits.address_space': {'layers': ('rlimits',), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'limits.processes': {'layers': ('cgroup', 'rlimits', 'pid_namespace'), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'limits.open_files': {'layers': ('rlimits',), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'limits.file_size': {'layers': ('rlimits',), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'limits.cpu_seconds': {'layers': ('rlimits',), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'limits.inotify_instances': {'layers': ('rlimits', 'pid_namespace'), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'limits.inotify_watches': {'layers': ('rlimits', 'pid_namespace'), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'limits.message_queues': {'layers': ('rlimits', 'pid_namespace'), 'inherit': 'replace', 'narrow': 'min', 'size': True, 'compare': 'bytes'},
    'limits.pending_signals': {'layers': ('rlimits', 'pid_namespace'), 'inherit': 'replace', 'narrow': 'min', 'size': False},
    'audit.log': {'layers': ('pid_namespace', 'cgroup', 'mount_namespace', 'landlock'), 'inherit': 'replace', 'narrow': 'ceiling', 'size': False},
    'audit.max_bytes': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'max', 'size': False},
    'audit.keep': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'max', 'size': False},
    'audit.metrics': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'ceiling', 'size': False},
    'audit.violations.categories': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'union', 'size': False},
    'audit.violations.notice': {'layers': (), 'inherit': 'replace', 'narrow': 'ceiling', 'size': False},
    'audit.violations.stop_after': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'min', 'size': False, 'unlimited': 0},
    'audit.violations.window_seconds': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'max', 'size': False},
    'audit.violations.block_seconds': {'layers': ('pid_namespace', 'cgroup'), 'inherit': 'replace', 'narrow': 'max', 'size': False},
}

# The keys whose values are sizes (bytes, or strings such as 8GiB: resolved.parse_size).
SIZE_KEYS = tuple(k for k, f in KEYS.items() if f["size"])
