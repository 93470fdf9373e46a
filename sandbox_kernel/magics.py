"""`%sandbox`: what this kernel's sandbox enforces, hard or soft (the `doctor` report)."""

from __future__ import annotations

from IPython.core.magic import Magics, line_magic, magics_class


@magics_class
class SandboxMagics(Magics):
    def __init__(self, shell, kernel):
        super().__init__(shell)
        self.kernel = kernel

    @line_magic
    def sandbox(self, line=""):
        """Show the sandbox profile, the layers in force (hard/soft) and the accelerators."""
        from .doctor import render  # on first use: it imports every layer module

        print(render(self.kernel.policy, self.kernel.layer_status))
