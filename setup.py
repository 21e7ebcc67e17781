"""Only here to map kernels/ to the import name `aigp_kernels`; everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["aigp_train", "aigp_train.*"]) + ["aigp_kernels"],
    package_dir={"aigp_kernels": "kernels"},
)
