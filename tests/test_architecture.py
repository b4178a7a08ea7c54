"""The import picture of README "Architecture", checked on the source (an AST walk, no imports).

Layers are folders (LAYERS below): core ← stores ← pipeline; core ← stores ← student;
pipeline + student ← evaluation ← app ← cli.py. Project imports sit at the top of each module;
a function may import lazily only a heavy third-party package, so that importing a module
stays cheap for those who never call it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "uniskel"  # the repository root, installed as one package (setup.py)
# The layers, as folder rules: each package of the repository may import itself and the packages
# named here, nothing else. cli.py and __main__.py sit on top and may import anything.
LAYERS: dict[str, set[str]] = {
    "core": set(),                                  # the foundation every layer uses
    "stores": {"core"},                             # the soft-label store
    "pipeline": {"core", "stores"},                 # stage one: teachers write stores
    "student": {"core", "stores"},                  # stage two: reads stores, never runs teachers
    "evaluation": {"core", "pipeline", "student"},  # runs students and ONNX teachers, scores them
    "app": {"core", "stores", "pipeline", "student", "evaluation"},  # demo, synth, inspection
}
TOP = ("cli", "__main__")
# Imported inside the functions that need them, for what importing them costs (measured after
# numpy: torch.utils.tensorboard 1.8 s, onnx 1.2 s, matplotlib 0.7 s, distributed 0.5 s, scipy.io
# 0.25 s, more than core.datasets itself) or because one path alone needs them (onnxruntime:
# teachers). faster-coco-eval (COCO AP) costs 0.05 s and is imported at the top.
HEAVY = ("onnxruntime", "onnx", "distributed", "dask.distributed", "matplotlib",
         "torch.utils.tensorboard", "scipy.io")
SECTION = re.compile(r'docs/conventions\.md "([A-Z][^"]*)"')
# References a maintainer cannot follow: a page that is not in the repository.
DEAD_REFERENCE = re.compile(r'\bSPEC(\.md\b| ")|\.\./shared/')


def _packages() -> list[str]:
    """Every folder of the repository that is a package (has an __init__.py)."""
    return sorted(p.parent.name for p in REPO.glob("*/__init__.py"))


def _layer(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in LAYERS else None


def _modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the packages."""
    out = {}
    for package in _packages():
        for path in sorted((REPO / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function or class) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [_in_repo(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from uniskel.pipeline import crops` imports the module core.crops.
            base = _in_repo(base)
            folder = REPO / base.replace(".", "/")
            names = [f"{base}.{a.name}" if (folder / f"{a.name}.py").is_file() else base
                     for a in node.names]
        else:
            continue
        found.update((node.lineno, name, id(node) in nested) for name in names)
    return sorted(found)


def _in_repo(name: str) -> str:
    """uniskel.pipeline.x → pipeline.x (the module's path in the repository)."""
    return name.removeprefix(NAMESPACE + ".") if name.startswith(NAMESPACE + ".") else name


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def _project(name: str) -> bool:
    return name.split(".")[0] in (*LAYERS, *TOP)


def test_every_package_has_a_layer():
    unknown = [p for p in _packages() if p not in LAYERS and p not in ("tests", "bench")]
    assert not unknown, (f"{unknown}: a package with no layer; add its folder rule to LAYERS in "
                         "tests/test_architecture.py and to README \"Architecture\"")


def test_no_modules_beside_the_packages():
    """The repository root holds only the top (cli.py, __main__.py) and setup.py."""
    extra = sorted(p.name for p in REPO.glob("*.py")
                   if p.stem not in TOP + ("__init__", "setup"))
    assert not extra, f"{extra}: modules at the top level; put each in the package of its layer"


def test_project_modules_are_imported_through_the_namespace():
    """`import pipeline` works only from the repository root; installed, it is uniskel.pipeline
    (and a bare `pipeline` may be another package's)."""
    files = [p for d in (*_packages(), "bench") for p in sorted((REPO / d).glob("*.py"))]
    bad = []
    for path in files + [REPO / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad += [f"{_where(path, node.lineno)}: imports {n}; write {NAMESPACE}.{n}"
                    for n in names if _project(n)]
    assert not bad, "\n".join(bad)


def test_project_imports_at_the_top():
    bad = [f"{_where(path, line)}: imports {name} inside a function or class "
           "(rule: project imports go at the top of the module)"
           for module, path in _modules().items()
           for line, name, nested in _imports(module, path) if nested and _project(name)]
    assert not bad, "\n".join(bad)


def test_imports_follow_the_layers():
    bad = []
    for module, path in _modules().items():
        layer = _layer(module)
        for line, name, _ in _imports(module, path):
            if not _project(name):
                continue
            target = _layer(name)
            if target == layer or target in LAYERS[layer]:
                continue
            allowed = ", ".join(sorted(LAYERS[layer] | {layer}))
            bad.append(f"{_where(path, line)}: {module} imports {name} "
                       f"(rule: {layer}/ may import only {allowed})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {n for _, n, _ in _imports(m, p) if n in modules and n != m}
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path + [m, n]
            if n not in state and (cycle := visit(n, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [])):
            raise AssertionError(f"import cycle: {' → '.join(cycle[cycle.index(cycle[-1]):])}")


def test_lazy_imports_are_heavy_packages_only():
    bad = [f"{_where(path, line)}: imports {name} inside a function (rule: only heavy "
           f"packages are imported lazily: {', '.join(HEAVY)}; move it to the top)"
           for module, path in _modules().items()
           for line, name, nested in _imports(module, path)
           if nested and not _project(name)
           and not any(name == h or name.startswith(h + ".") for h in HEAVY)]
    assert not bad, "\n".join(bad)


def test_comments_cite_real_sections_of_the_conventions():
    sections = {line[3:].strip() for line in (REPO / "docs" / "conventions.md").read_text()
                .splitlines() if line.startswith("## ")}
    files = [p for d in (*_packages(), "bench") for p in sorted((REPO / d).glob("*.py"))]
    files += [REPO / "cli.py", REPO / "README.md", REPO / "BENCHMARKS.md"]
    bad = []
    for path in files:
        text = path.read_text()
        bad += [f"{path.relative_to(REPO)}: cites {s!r}, not a section of docs/conventions.md"
                for s in (" ".join(c.split()) for c in SECTION.findall(text)) if s not in sections]
        lines = text.splitlines()
        bad += [f"{path.relative_to(REPO)}:{i}: {lines[i - 1].strip()!r} cites a page that is "
                'not in the repository; cite docs/conventions.md "<section>"'
                for i in sorted({text.count("\n", 0, m.start()) + 1
                                 for m in DEAD_REFERENCE.finditer(text)})]
    assert not bad, "\n".join(bad)
