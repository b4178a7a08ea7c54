"""uni installs under one namespace of its own: its wheel holds every subpackage of the
repository (found by setup.py) under uniskel/ and nothing else at the top; next to a package that
ships top-level `cli.py` and `pipeline/` (names other projects use), removing that package
leaves `uni` working."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
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


def _packages(root: Path) -> list[Path]:
    """The repository's package folders below its root, relative to it: each holds an
    __init__.py, as do its parents; not tests/ or bench/."""
    found, todo = [], [d for d in root.iterdir() if d.is_dir() and d.name not in ("tests", "bench")]
    while todo:
        folder = todo.pop()
        if (folder / "__init__.py").is_file():
            found.append(folder.relative_to(root))
            todo += [d for d in folder.iterdir() if d.is_dir()]
    return sorted(found)


def _assert_wheel_holds_the_package(wheel: Path) -> None:
    """Every package folder as uniskel/<folder>/ with all its .py files, the built-in skeleton
    table and `python -m uniskel`; at the top only uniskel/ and its dist-info."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    tops = {n.split("/")[0] for n in names}
    assert tops == {"uniskel", dist_info}, tops
    packages = _packages(REPO)
    assert {"core", "stores", "pipeline", "student", "evaluation", "app"} <= {
        str(p) for p in packages}, packages
    for folder in packages:
        want = {f"uniskel/{f.relative_to(REPO).as_posix()}" for f in (REPO / folder).glob("*.py")}
        assert want <= names, (folder, sorted(want - names))
    want = {f"uniskel/{f}" for f in ("__init__.py", "__main__.py", "cli.py", "core/skeletons.toml")}
    assert want <= names, sorted(want - names)
    assert "uniskel/setup.py" not in names  # the build script is not a module of the package


def test_uni_survives_installing_and_removing_a_package_with_the_same_top_level_names(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(wheels)]
    _run(build + [str(REPO)])
    _run(build + [str(_other_package(tmp_path / "othertool"))])
    uni_wheel = next(wheels.glob("uniskel-*.whl"))
    _assert_wheel_holds_the_package(uni_wheel)

    # A bare venv; uni's dependencies come from this venv's site-packages, after its own.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # No PYTHON* search paths or active venv of ours: the bare venv sees only what it installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    bare = set(os.listdir(site))
    _run(pip + [str(uni_wheel)], env=env)
    dist_info = "-".join(uni_wheel.name.split("-")[:2]) + ".dist-info"
    assert set(os.listdir(site)) - bare == {"uniskel", dist_info}
    _run(pip + [str(next(wheels.glob("othertool-*.whl")))], env=env)
    _run([str(py), "-m", "pip", "uninstall", "-y", "othertool"], env=env)

    out = _run([str(env_dir / "bin" / "uni"), "--help"], env=env, cwd=tmp_path).stdout
    assert "cache-teachers" in out and "train-student" in out
    out = _run([str(py), "-m", "uniskel", "--help"], env=env, cwd=tmp_path).stdout
    assert out.startswith("Usage: uni "), out
    version = _run([str(env_dir / "bin" / "uni"), "--version"], env=env, cwd=tmp_path).stdout
    assert version.strip() == f"uni, version {uni_wheel.name.split('-')[1]}", version
    # Nothing of uni's was taken away with the other package, and it left no `cli` behind.
    assert (site / "uniskel" / "cli.py").is_file()
    assert not (site / "cli.py").exists() and not (site / "pipeline").exists()
