"""Benchmarks: the sandboxed kernel against the stock python3 ipykernel, through real kernels.

``python -m benchmarks run [--device auto|cpu|cuda] [--quick] [--out DIR]``; see benchmarks/README.md.
"""
