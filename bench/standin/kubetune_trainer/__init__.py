"""A stand-in for the real trainer package, for the operator scale benchmark only.

Placed first on the devcluster pods' PYTHONPATH (`DEVCLUSTER_POD_PYTHONPATH`), it shadows
`kubetune_trainer`, so the operator's unchanged Jobs (`python -m kubetune_trainer`) run it:
the benchmark then measures the operator, not PyTorch on a 2-core machine.
"""
