"""The repository root is the package uniskel; every folder below it with an __init__.py is one
of its subpackages, found here so that a new one never silently misses the wheel. pyproject.toml
holds everything else (setuptools cannot map a root folder to a package name from TOML alone)."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SUBPACKAGES = find_packages(".", exclude=("tests*", "bench*", "build*"))


class BuildPy(build_py):
    """Leaves this file out: at the package's root it would install as `uniskel.setup`."""

    def find_package_modules(self, package, package_dir):
        found = super().find_package_modules(package, package_dir)
        return [m for m in found if (m[0], m[1]) != ("uniskel", "setup")]


setup(package_dir={"uniskel": "."}, packages=["uniskel", *(f"uniskel.{p}" for p in SUBPACKAGES)],
      cmdclass={"build_py": BuildPy})
