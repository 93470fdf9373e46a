"""Policy profiles: the public face of finding, loading, validating, inheriting and narrowing.

A profile is YAML data checked against one JSON Schema (``profiles/schema.json``),
which also carries every default. Nothing here enforces anything: the layers in
``sandbox_kernel.layers`` and the import guard read the resolved ``Policy``.

The work is split along its seams; this module only re-exports them:

- ``profile_files``: the search path, names and paths (standard library only: on the
  launcher's cache-hit path);
- ``policy_load``: one file's YAML, the schema, the error messages (the only module
  that imports PyYAML and jsonschema, inside the functions that need them);
- ``policy_merge``: ``extends`` chains, defaults, ``resolve``, ``effective`` and the
  ceiling's ``narrow``;
- ``resolved``: the resolved ``Policy`` every process reads, and value helpers.
"""

from __future__ import annotations

from .errors import ProfileError
from .policy_load import (MAX_PROFILE_BYTES, MAX_REPORTED, load_file, schema, semantic_problems,
                          validate)
from .policy_merge import (CONCATENATED_LISTS, ENFORCEMENT_ORDER, MAX_EXTENDS_DEPTH, NETWORK_ORDER, effective,
                           narrow, resolve)
from .profile_files import (CEILING_ENV, DEFAULT_PROFILE, PROFILE_PATH_ENV, SYSTEM_PROFILE_DIR, chain_dirs,
                            find_profile, is_path_like, list_profiles, search_path)
from .resolved import MAX_SIZE, Policy, device_key, normalise_distribution, parse_size

__all__ = [
    "CEILING_ENV", "CONCATENATED_LISTS", "DEFAULT_PROFILE", "ENFORCEMENT_ORDER", "MAX_EXTENDS_DEPTH",
    "MAX_PROFILE_BYTES", "MAX_REPORTED", "MAX_SIZE", "NETWORK_ORDER", "PROFILE_PATH_ENV", "Policy", "ProfileError",
    "SYSTEM_PROFILE_DIR", "chain_dirs", "device_key", "effective", "find_profile", "is_path_like", "list_profiles",
    "load_file", "narrow", "normalise_distribution", "parse_size", "resolve", "schema", "search_path",
    "semantic_problems", "validate",
]
