"""One module per isolation layer (its facts, ``prepare`` and ``apply``: see ``registry``), and
what they share: the status report (``status``), the launch context (``context``), the
connection-file directory check (``connection_dir``), Jupyter's directories
(``jupyter_paths``), the interpreter's files (``python_files``), fixed host paths
(``system_dirs``) and the program directories of packages' trees (``program_trees``).

``registry.LAYERS`` lists the layers in the order the launcher applies them.
Kept free of imports so that child interpreters arming the guard load only what
they need.
"""
