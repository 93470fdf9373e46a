"""sandbox-kernel: an execution-sandbox Jupyter kernel for multi-tenant notebook platforms."""

from .errors import ProhibitedCommandError, ProhibitedImportError

__version__ = "0.1.0"
__all__ = ["ProhibitedImportError", "ProhibitedCommandError", "__version__"]
