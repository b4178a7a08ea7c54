"""`make bench` must not rot silently: every bench/*.py script imports and answers --help as
`python bench/NAME.py` runs it, and every group of bench/run_all.py is a script with a run()
whose arguments run_all supplies."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO

BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Each script's `--help`, a few at a time (each process imports torch: seconds apiece).
    TMPDIR is a scratch folder: some scripts make their default work folders under it."""
    tmp = tmp_path_factory.mktemp("bench_help")
    env = {**os.environ, "TMPDIR": str(tmp)}

    def help_of(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCH / name), "--help"], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(zip(SCRIPTS, pool.map(help_of, SCRIPTS), strict=True))


def _tree(name: str) -> ast.Module:
    return ast.parse((BENCH / name).read_text(), filename=name)


def _is_main_script(tree: ast.Module) -> bool:
    """Whether the module has an `if __name__ == "__main__":` block."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_imports_and_answers_help(name, helps):
    r = helps[name]
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"{name}: {r.stderr[-3000:]}"
    if _is_main_script(_tree(name)):  # the others (common, online) are libraries
        assert r.stdout.startswith("usage:"), f"{name}: {r.stdout[:500]}"


def _dict_literal(tree: ast.Module, name: str) -> ast.Dict:
    """The dict a top-level `NAME = {...}` assigns."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)):
            return node.value
    raise AssertionError(f"no {name} = {{...}} in bench/run_all.py")


def _keys(d: ast.Dict) -> set[str]:
    return {k.value for k in d.keys if isinstance(k, ast.Constant)}


def _flags(tree: ast.Module) -> set[str]:
    """The destinations of every `add_argument("--a-flag", ...)` call: a_flag."""
    return {arg.value[2:].replace("-", "_") for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            for arg in node.args[:1] if isinstance(arg, ast.Constant)
            and arg.value.startswith("--")}


def _args_read(tree: ast.Module) -> set[str]:
    """Every `args.NAME` the module reads."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "args"}


def test_run_all_groups_resolve_to_scripts_it_gives_every_argument():
    """Each group of run_all.GROUPS is a module run_all imports, a bench script with a
    top-level run(args), and every args.NAME that script reads is run_all's to give (its own
    flags, the common ones, or a key of SMALL); BIG only resizes what SMALL has."""
    run_all = _tree("run_all.py")
    groups = _dict_literal(run_all, "GROUPS")
    imported = {alias.name for node in run_all.body if isinstance(node, ast.Import)
                for alias in node.names}
    small, big = _keys(_dict_literal(run_all, "SMALL")), _keys(_dict_literal(run_all, "BIG"))
    assert big <= small, big - small
    given = small | _flags(run_all) | _flags(_tree("common.py"))
    assert groups.values
    for key, value in zip(groups.keys, groups.values, strict=True):
        assert isinstance(value, ast.Name) and value.id in imported, ast.unparse(value)
        module = value.id
        assert (BENCH / f"{module}.py").is_file(), module
        tree = _tree(f"{module}.py")
        assert any(isinstance(node, ast.FunctionDef) and node.name == "run"
                   for node in tree.body), f"{module}.py has no run(args)"
        missing = _args_read(tree) - given
        assert not missing, f"group {ast.unparse(key)} reads args {sorted(missing)}"

