"""Distributed execution: process groups (``dist``), the cluster described as data (``cluster``:
``ClusterSpec``, ``load_cluster``, SLURM nodelist expansion), and launch checks (``doctor``).

Submodules are imported on use; this package import is cheap.
"""
