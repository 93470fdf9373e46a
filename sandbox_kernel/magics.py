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
        info = getattr(self.kernel, "pool_info", None)
        if info:  # what differs from a cold start: when the kernel started, and under which id (docs/pool.md)
            print(f"pool: started ahead of need as {info['pool_id']}, handed out as kernel {info['kernel_id']}; "
                  f"its rules were fixed at that start, as for a cold start in the same directory")
