"""The repository root is the package uniskel; every folder below it with an __init__.py is one
of its subpackages, found here so that a new one never silently misses the wheel. pyproject.toml
holds everything else (setuptools cannot map a root folder to a package name from TOML alone)."""

from setuptools import find_packages, setup

SUBPACKAGES = find_packages(".", exclude=("tests*", "bench*", "build*"))
setup(package_dir={"uniskel": "."}, packages=["uniskel", *(f"uniskel.{p}" for p in SUBPACKAGES)])
