"""`python -m sandbox_kernel -f {connection_file} --profile NAME` starts the kernel."""

from .kernel import main

if __name__ == "__main__":
    main()
