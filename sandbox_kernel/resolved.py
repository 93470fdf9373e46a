"""The resolved policy: complete data (defaults filled) and the questions the layers ask it.

Kept apart from finding (``profile_files``), loading and validating (``policy_load``)
and inheriting and narrowing (``policy_merge``) profiles, with only standard-library
imports: every Python process started inside the sandbox rebuilds this object from
``SANDBOX_KERNEL_POLICY`` while ``site`` runs, and pays for its imports; the launcher
reads it from the validated-policy cache before any layer is applied. The value
helpers the layers share (``parse_size``, ``device_key``) live here for the same reason.
"""

from __future__ import annotations

from . import standins
from .standins import split_size

MAX_SIZE = 2**63 - 1  # what setrlimit and cgroup files take


def rule_module(item) -> str:
    return item if isinstance(item, str) else item["module"]


class Policy:
    """A fully resolved policy: complete data (defaults filled) plus where it came from."""

    def __init__(self, data: dict, *, name: str, sources: list[str], ceiling: str | None = None,
                 ceiling_sources: list[str] | None = None):
        self.data = data
        self.name = name
        self.sources = sources
        self.ceiling = ceiling
        self.ceiling_sources = ceiling_sources or []
        self._deny = {rule_module(r): self._deny_rule(r) for r in data["imports"]["deny"]}
        if not data["accelerators"]["tpu"]["enabled"]:
            self._deny.setdefault("libtpu", {
                "module": "libtpu", "category": "accelerator", "distributions": ["libtpu", "libtpu-nightly"],
                "reason": "TPUs are not in this tenant's profile (accelerators.tpu.enabled is false)"})
        self._allow = set(data["imports"]["allow"])
        self._tops = {m.partition(".")[0] for m in self._deny}  # no other package can have a denied prefix

    # -- identity
    @property
    def label(self) -> str:
        return f"{self.name} (ceiling {self.ceiling})" if self.ceiling else self.name

    def _deny_rule(self, item) -> dict:
        if isinstance(item, str):
            return {"module": item, "category": "custom", "reason": "listed in the profile's imports.deny"}
        return {"category": "custom", "reason": "listed in the profile's imports.deny", **item}

    # -- imports
    def import_rule(self, module: str) -> dict | None:
        """The deny rule that refuses `module`, or None when it is allowed.

        The most specific entry (longest dotted prefix) wins; at equal specificity
        a deny beats an allow. A package above an allowed module is importable, the
        denied package itself included: Python imports ``a`` and ``a.b`` before
        ``a.b.c``, so with ``deny: [a]`` and ``allow: [a.b.c]`` refusing ``a`` would
        make the allow entry useless. Its other submodules stay denied.
        """
        if module.partition(".")[0] not in self._tops:
            return None  # most imports: no rule names their package (one set lookup per import)
        parts = module.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self._deny:
                if self._is_ancestor_of_allowed(module):
                    return None
                return self._deny[prefix]
            if prefix in self._allow:
                return None
        return None

    def _is_ancestor_of_allowed(self, module: str) -> bool:
        head = module + "."
        return any(a.startswith(head) for a in self._allow)

    def deny_rules(self) -> list[dict]:
        return list(self._deny.values())

    def denied_distributions(self) -> dict[str, dict]:
        """Normalised PyPI distribution name -> deny rule (for `pip install` checks)."""
        out: dict[str, dict] = {}
        for rule in self._deny.values():
            names = rule.get("distributions")
            if names is None:
                names = [rule["module"]] if "." not in rule["module"] else []
            for n in names:
                out[normalise_distribution(n)] = rule
        return out

    def shell_rules(self) -> list[dict]:
        out = []
        for item in self.data["shell"]["deny"]:
            if isinstance(item, str):
                out.append({"pattern": item, "category": "custom", "reason": "listed in the profile's shell.deny"})
            else:
                out.append({"category": "custom", "reason": "listed in the profile's shell.deny", **item})
        return out

    # -- shortcuts
    @property
    def network(self) -> dict:
        return self.data["network"]

    @property
    def limits(self) -> dict:
        return self.data["limits"]

    @property
    def gpu(self) -> dict:
        return self.data["accelerators"]["gpu"]

    @property
    def tpu(self) -> dict:
        return self.data["accelerators"]["tpu"]

    def enforcement(self, layer: str) -> str:
        return self.data["enforcement"][layer]

    @property
    def audit_log(self) -> str | None:
        return self.data["audit"]["log"]

    # -- transport between the launcher, the kernel and child interpreters
    def to_json(self) -> str:
        return standins.json_dumps({"name": self.name, "sources": self.sources, "ceiling": self.ceiling,
                           "ceiling_sources": self.ceiling_sources, "data": self.data},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls.from_dict(standins.json_loads(text))

    @classmethod
    def from_dict(cls, d: dict) -> Policy:
        """The inverse of ``standins.json_loads(policy.to_json())``."""
        return cls(d["data"], name=d["name"], sources=d["sources"], ceiling=d.get("ceiling"),
                   ceiling_sources=d.get("ceiling_sources"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Policy({self.label!r})"


def normalise_distribution(name: str) -> str:
    """PEP 503 normalisation; also maps import-style underscores to dashes."""
    import re  # not at import time: child interpreters and the launcher import this module without re

    return re.sub(r"[-_.]+", "-", name).lower()


def parse_size(value: int | str) -> int:
    """512MiB, 8G, 1.5GB, 1048576 -> bytes (K/M/G/T are powers of 1024 with or without i)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; expected bytes or a string such as 8GiB")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{value} is not a positive size")
        if value > MAX_SIZE:
            raise ValueError(f"{value} is too large; at most {MAX_SIZE} bytes (8 EiB)")
        return value
    parts = split_size(str(value).strip())
    if not parts:
        raise ValueError(f"{value!r} is not a size; expected bytes or a string such as 512MiB, 8G")
    # Exact integer arithmetic (a float turns a long digit string into inf; fractions
    # would import decimal on the launcher's path): 1.5G = 15 * 1024**3 // 10, truncated.
    whole, _, frac = parts[0].partition(".")
    result = int(whole + frac) * 1024 ** "_KMGT".index(parts[1] or "_") // 10 ** len(frac)
    if result < 1:
        raise ValueError(f"{value!r} is not a positive size")
    if result > MAX_SIZE:
        raise ValueError(f"{value!r} is too large; at most {MAX_SIZE} bytes (8 EiB)")
    return result


def device_key(d):
    """Identity of a device entry: an index, or a MIG UUID."""
    if isinstance(d, dict):
        return d["mig"]
    return d
