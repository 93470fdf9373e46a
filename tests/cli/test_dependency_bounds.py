"""pyproject.toml states what is tested: the lower bounds of the libraries the kernel is built on
are the versions CI runs the suite on (.ci/constraints-lowest.txt), and requires-python is the
Python the suite runs on."""

import os
import platform
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from testenv import REPO

ROOT = str(REPO)


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)["project"]


def _lowest() -> dict[str, str]:
    with open(os.path.join(ROOT, ".ci", "constraints-lowest.txt")) as fh:
        pins = [Requirement(line) for line in (raw.split("#")[0].strip() for raw in fh) if line]
    return {r.name.replace("_", "-").lower(): str(next(iter(r.specifier)).version) for r in pins}


def test_each_lower_bound_is_what_ci_installs():
    lowest = _lowest()
    assert {"ipykernel", "jupyter-client", "pyzmq"} <= set(lowest), lowest
    bounds = {}
    for text in _project()["dependencies"]:
        r = Requirement(text)
        floors = [s.version for s in r.specifier if s.operator == ">="]
        bounds[r.name.replace("_", "-").lower()] = floors[0] if floors else None
    for name, pinned in lowest.items():
        assert bounds.get(name) is not None, f"{name} is pinned in .ci/constraints-lowest.txt but has no >= bound"
        assert SpecifierSet(f"=={bounds[name]}").contains(pinned), (
            f"pyproject.toml allows {name}>={bounds[name]}, but CI tests {pinned}: make them the same")


def test_ci_installs_with_the_lowest_versions():
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        ci = fh.read()
    assert "SANDBOX_KERNEL_CONSTRAINTS=.ci/constraints-lowest.txt" in ci, ci
    with open(os.path.join(ROOT, "scripts", "setup.sh")) as fh:
        assert "SANDBOX_KERNEL_CONSTRAINTS" in fh.read()


def test_requires_python_admits_the_python_under_test():
    assert SpecifierSet(_project()["requires-python"]).contains(platform.python_version())
