"""One module per isolation layer, each with ``NAME`` and ``apply(policy, ctx, status)``.

The launcher (``sandbox_kernel.launcher.LAYERS``) lists them in the order applied.
Kept free of imports so that child interpreters arming the guard load only what
they need.
"""
