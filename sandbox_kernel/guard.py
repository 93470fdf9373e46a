"""The import guard: a ``sys.meta_path`` finder at position 0.

Enforcement: soft. It gives a clear error and an audit record for the common case
(``import x``, ``importlib.import_module``, ``__import__``, ``exec("import x")``,
imports inside libraries and child interpreters); code that is determined to
remove it can (the kernel puts it back before every cell, purges denied modules
from ``sys.modules`` and the OS layers are the boundary).

The finder also runs post-import hooks (e.g. capping torch's CUDA allocator when
``torch.cuda`` is first imported), because it sees every import first.
"""

from __future__ import annotations

import sys

from . import audit
from .errors import ProhibitedImportError


class _PostImportLoader:
    """Wraps a real loader and calls a hook once the module has executed."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._hook(module)
        except Exception as e:  # a hook must never break the user's import
            print(f"sandbox-kernel: post-import hook for {module.__name__} failed: {e}", file=sys.__stderr__)

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, name)


class ImportGuard:
    """A meta path finder (duck-typed: importlib.abc costs child interpreters start-up time)."""

    def __init__(self, policy, *, layer: str = "import_guard"):
        self.policy = policy
        self.layer = layer
        self.post_import: dict = {}  # module name -> hook(module), run once after it executes
        self._deny_names = tuple(r["module"] for r in policy.deny_rules())

    # -- the finder protocol
    def find_spec(self, fullname, path=None, target=None):
        __tracebackhide__ = True  # IPython hides this frame: the error is about the user's import
        rule = self.policy.import_rule(fullname)
        if rule is not None:
            raise self.refusal(fullname, rule)
        hook = self.post_import.get(fullname)
        if hook is None:
            return None
        spec = self._find_with_others(fullname, path, target)
        if spec is not None and spec.loader is not None:
            self.post_import.pop(fullname, None)
            spec.loader = _PostImportLoader(spec.loader, hook)
        return spec

    def _find_with_others(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, ImportGuard):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    # -- refusals
    def refusal(self, module: str, rule: dict, *, via: str = "import") -> ProhibitedImportError:
        err = ProhibitedImportError(module, rule=rule["module"], category=rule["category"],
                                    reason=rule["reason"], profile=self.policy.label)
        if self.policy.audit_log:  # (before the record: the supervisor's copy must find it shown)
            from .audit_policy import notice_now

            notice_now(self.policy, rule["category"])
        audit.record(self.policy.audit_log, profile=self.policy.label, layer=self.layer,
                     what=f"{via} {module}", detail=str(err), category=rule["category"])
        return err

    # -- keeping it in place
    def install(self) -> list[str]:
        """Put the guard at sys.meta_path[0] and purge denied modules already loaded."""
        self.ensure_first()
        return self.purge_denied()

    def ensure_first(self) -> bool:
        """Restore the guard to position 0; True when it had been moved or removed."""
        mp = sys.meta_path
        if mp and mp[0] is self and not any(f is not self and isinstance(f, ImportGuard) for f in mp[1:]):
            return False
        mp[:] = [self] + [f for f in mp if not isinstance(f, ImportGuard)]
        return True

    def purge_denied(self) -> list[str]:
        """Remove denied modules from sys.modules so that importing them again is refused."""
        mods = sys.modules
        if not any(name in mods for name in self._deny_names):
            return []  # the common case costs one dict lookup per rule
        purged = [name for name in list(mods) if self.policy.import_rule(name) is not None]
        for name in purged:
            mods.pop(name, None)
        if purged:
            audit.record(self.policy.audit_log, profile=self.policy.label, layer=self.layer,
                         what="purge " + ", ".join(sorted(purged)[:10]),
                         detail="denied modules found in sys.modules were removed")
        return purged


def current_guard() -> ImportGuard | None:
    for f in sys.meta_path:
        if isinstance(f, ImportGuard):
            return f
    return None
