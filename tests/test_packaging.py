"""uni installs under one namespace of its own: next to a package that ships top-level `cli.py`
and `pipeline/` (names other projects use), removing that package leaves `uni` working."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r


def _other_package(root: Path) -> Path:
    """A distribution 'othertool' whose top-level modules are `cli` and `pipeline`."""
    (root / "pipeline").mkdir(parents=True)
    (root / "pipeline" / "__init__.py").write_text("WHO = 'othertool'\n")
    (root / "cli.py").write_text("def main():\n    print('othertool')\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "othertool"\nversion = "1.0"\n'
        '[tool.setuptools]\npy-modules = ["cli"]\npackages = ["pipeline"]\n')
    return root


def test_uni_survives_installing_and_removing_a_package_with_the_same_top_level_names(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(wheels)]
    _run(build + [str(REPO)])
    _run(build + [str(_other_package(tmp_path / "othertool"))])
    uni_wheel = next(wheels.glob("uniskel-*.whl"))
    names = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(uni_wheel)],
                           capture_output=True, text=True).stdout
    tops = {line.split()[0].split("/")[0] for line in names.splitlines()[1:] if line.strip()}
    assert tops <= {"uniskel", uni_wheel.name.split("-")[0] + "-" +
                    uni_wheel.name.split("-")[1] + ".dist-info"}, tops

    # A bare venv; uni's dependencies come from this venv's site-packages, after its own.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    _run(pip + [str(uni_wheel)], env=env)
    _run(pip + [str(next(wheels.glob("othertool-*.whl")))], env=env)
    _run([str(py), "-m", "pip", "uninstall", "-y", "othertool"], env=env)

    out = _run([str(env_dir / "bin" / "uni"), "--help"], env=env, cwd=tmp_path).stdout
    assert "cache-teachers" in out and "train-student" in out
    version = _run([str(env_dir / "bin" / "uni"), "--version"], env=env, cwd=tmp_path).stdout
    assert version.strip() == f"uni, version {uni_wheel.name.split('-')[1]}", version
    # Nothing of uni's was taken away with the other package, and it left no `cli` behind.
    assert (site / "uniskel" / "cli.py").is_file()
    assert not (site / "cli.py").exists() and not (site / "pipeline").exists()
