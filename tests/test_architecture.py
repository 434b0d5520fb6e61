"""The import rules of docs/architecture.md, checked on the source: every ``import`` statement of the package
(module level and inside functions) is resolved and no forbidden edge may exist."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bertdistill"
PKG = "bertdistill"

# (importer prefix, forbidden imported prefix, why)
FORBIDDEN = [
    *(
        (engine, f"{PKG}.methods", "the engine never names a method: it calls the protocol")
        for engine in (
            f"{PKG}.training",
            f"{PKG}.evaluation",
            f"{PKG}.inference",
            f"{PKG}.cli",
            f"{PKG}.export",
            f"{PKG}.precision",
            f"{PKG}.reporting",
            f"{PKG}.sweep",
            f"{PKG}.timing",
            f"{PKG}.protocol",
            f"{PKG}.features",
            f"{PKG}.checks",
        )
    ),
    *(
        (shared, f"{PKG}.methods", "shared pieces sit below the methods")
        for shared in (
            f"{PKG}.data",
            f"{PKG}.teachers",
            f"{PKG}.losses",
            f"{PKG}.layer_map",
            f"{PKG}.students",
            f"{PKG}.mlm_head",
            f"{PKG}.hub",
            f"{PKG}.config",
        )
    ),
    (f"{PKG}.config", f"{PKG}.registry", "config.py knows no method (recipes.py joins config and registry)"),
    (f"{PKG}.config", f"{PKG}.recipes", "config.py is the bottom layer"),
    (f"{PKG}.data", f"{PKG}.training", "data does not reach up into training"),
    (f"{PKG}.protocol", f"{PKG}.training", "the protocol does not depend on the loop"),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Fully qualified modules (and ``module.name`` for ``from module import name``) imported by a file."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in out if m == PKG or m.startswith(PKG + ".")}


EDGES = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_the_walk_sees_the_package():
    assert f"{PKG}.training.loop" in EDGES and f"{PKG}.methods.kd" in EDGES
    assert f"{PKG}.protocol" in EDGES[f"{PKG}.training.loop"]  # relative imports are resolved


@pytest.mark.parametrize("importer,forbidden,why", FORBIDDEN)
def test_no_forbidden_import(importer, forbidden, why):
    bad = sorted(
        f"{mod} -> {imp}"
        for mod, imports in EDGES.items()
        if mod == importer or mod.startswith(importer + ".")
        for imp in imports
        if imp == forbidden or imp.startswith(forbidden + ".")
    )
    assert not bad, f"{why}: {bad}"


def test_methods_import_no_other_method():
    """One method, one file: no method module imports another (shared code lives below them)."""
    bad = []
    for mod, imports in EDGES.items():
        if not mod.startswith(f"{PKG}.methods.") or mod.endswith("__init__"):
            continue
        for imp in imports:
            if imp.startswith(f"{PKG}.methods.") and not imp.startswith(mod):
                bad.append(f"{mod} -> {imp}")
    assert not bad, bad
