"""The trusted entry point of every sandboxed start: ``python -I -S <this file> run ...``.

Installed kernelspecs (and the terminal and batch-job recipes in the README) start the
launcher through this file, because everything that runs before the layers apply is
part of the attack surface (docs/architecture.md, "The trusted start"):

- ``-I -S``: the interpreter runs no ``site``, so no ``.pth`` file, ``sitecustomize``,
  ``usercustomize`` or user site directory, reads no ``PYTHON*`` variable and puts
  neither the script's directory nor the working directory on ``sys.path``. (``-I``
  alone still runs ``site`` and so every ``.pth`` file of site-packages.)
- This file registers the ``sandbox_kernel`` package from its own directory. The
  environment's site-packages is *not* put on ``sys.path``: the launch path can import
  only the standard library and this package, so an accidental third-party import is
  an ``ImportError`` here rather than code loaded from a directory the tenant may
  write. (On a validated-policy cache miss, the launcher adds site-packages to load
  YAML and JSON Schema, and only after checking that the tenant cannot write it.)

It imports nothing but ``sys``, ``os`` and importlib's own loader before handing over to
``sandbox_kernel.cli``. Without ``site``, Python 3.11 leaves ``sys.prefix`` at the base
interpreter for a virtual environment (``site.venv()`` sets it); ``_venv_prefix`` does that
one step, reading the same ``pyvenv.cfg`` the interpreter read (a trusted-start file), so
the launcher and the kernel agree on which environment they belong to.
"""

import sys


def _venv_prefix() -> None:
    """What site.venv() does to sys.prefix, without touching sys.path."""
    import os

    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    prefix = os.path.dirname(exe_dir)
    if any(os.path.isfile(os.path.join(d, "pyvenv.cfg")) for d in (exe_dir, prefix)):
        sys.prefix = sys.exec_prefix = prefix


def _register_package() -> None:
    import os

    try:  # what importlib.util re-exports, without importlib.util's own imports (contextlib, ...)
        from importlib._bootstrap import module_from_spec
        from importlib._bootstrap_external import spec_from_file_location
    except ImportError:  # pragma: no cover - a Python that moved them
        from importlib.util import module_from_spec, spec_from_file_location

    here = os.path.dirname(os.path.realpath(__file__))
    spec = spec_from_file_location(
        "sandbox_kernel", os.path.join(here, "__init__.py"), submodule_search_locations=[here])
    module = module_from_spec(spec)
    sys.modules["sandbox_kernel"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    if not sys.flags.no_site or not sys.flags.isolated:
        sys.stderr.write("sandbox-kernel: boot.py must be started as `python -I -S boot.py ...` "
                         "(no site, isolated); refusing to start\n")
        sys.exit(1)
    _venv_prefix()
    _register_package()
    from sandbox_kernel.cli import main

    sys.exit(main())
