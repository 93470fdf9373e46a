"""The status report: which layers are in force, as each layer's `apply` reported it.

The launcher passes it to the kernel as JSON in SANDBOX_KERNEL_LAYERS (STATUS_ENV); `doctor`,
`%sandbox` and `profiles show` read it there. Each layer either enforces its rules and reports
``active``/``partial``, reports ``off`` when the profile turns it off explicitly, or, when the
machine cannot give it, raises ``LayerUnavailable`` (enforcement ``required``, the default) or
reports ``unavailable`` (enforcement ``best-effort``). Nothing fails open silently.
"""

from __future__ import annotations

import os

from .. import standins
from ..errors import LayerUnavailable

SIMULATE_ENV = "SANDBOX_KERNEL_SIMULATE_MISSING"
STATUS_ENV = "SANDBOX_KERNEL_LAYERS"




def simulated_missing(layer: str) -> bool:
    """Test and diagnostic switch: pretend the machine lacks a layer.

    It can only make start-up fail (required layers) or report the layer unavailable
    (best-effort layers, which the profile has opted into): never a silent loosening.
    """
    return layer in os.environ.get(SIMULATE_ENV, "").split(",")


def level_or_off(policy, name: str, status: Status, why_off: str | None = None) -> str | None:
    """The layer's enforcement level, or None (reported off) when the profile turns it off."""
    level = policy.enforcement(name)
    if level == "off":
        status.off(name, why_off or f"enforcement.{name} is off in the profile")
        return None
    return level


class Status:
    """Which layers are in force, as reported by their `apply`."""

    def __init__(self, layers: dict | None = None):
        self.layers: dict[str, dict] = layers or {}

    def _set(self, name: str, state: str, detail: str, hard: bool | None = None, **extra) -> None:
        """`hard`: the layer's HARD, where it is not the registry's to look up (a layer the kernel
        applies passes its own: the registry imports every layer module, which the launcher has
        imported anyway but the kernel need not)."""
        if hard is None:
            from .registry import HARDNESS

            hard = HARDNESS.get(name, "hard") == "hard"
        self.layers[name] = {"state": state, "detail": detail, "hard": hard, **extra}

    def active(self, name, detail, **extra):
        self._set(name, "active", detail, **extra)

    def partial(self, name, detail, **extra):
        self._set(name, "partial", detail, **extra)

    def off(self, name, detail, **extra):
        self._set(name, "off", detail, **extra)

    def unavailable(self, name, detail, **extra):
        self._set(name, "unavailable", detail, **extra)

    def not_needed(self, name, detail, **extra):
        self._set(name, "not needed", detail, **extra)

    def cannot(self, name: str, level: str, why: str) -> None:
        """Fail closed: a required layer stops start-up; a best-effort one is reported unavailable."""
        if level == "required":
            raise LayerUnavailable(name, why)
        self.unavailable(name, why)

    def to_json(self) -> str:
        return standins.json_dumps(self.layers, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_env(cls, env=None) -> Status | None:
        text = (os.environ if env is None else env).get(STATUS_ENV)
        return cls(standins.json_loads(text)) if text else None

