"""The package never runs code from a file it reads: a scan of src/bertdistill's syntax trees for the calls that
can (pickle-based loads, unsafe YAML, eval/exec, remote model code forced on). Exceptions need an entry in
ALLOWED with the reason; there are none today."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bertdistill"

# (file relative to src/bertdistill, forbidden call as reported) -> why it is safe there
ALLOWED: dict[tuple[str, str], str] = {}

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _dotted(node: ast.expr) -> str:
    """``torch.load`` for ``torch.load``, ``load`` for a bare name, ``""`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _kw_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


def forbidden_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every forbidden call or import in a module's syntax tree."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {m}") for m in mods if m.split(".")[0] in PICKLE_MODULES]
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "torch.load" and not _kw_is(node, "weights_only", True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in (
            "yaml.load",
            "yaml.unsafe_load",
            "yaml.full_load",
            "yaml.load_all",
            "yaml.unsafe_load_all",
        ):
            found.append((node.lineno, name))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            found.append((node.lineno, f"{name}()"))
        elif name in ("np.load", "numpy.load") and _kw_is(node, "allow_pickle", True):
            found.append((node.lineno, f"{name}(allow_pickle=True)"))
        if _kw_is(node, "trust_remote_code", True):
            found.append((node.lineno, "trust_remote_code=True"))
    return found


def test_the_scanner_finds_each_forbidden_call():
    bad = """
import pickle
from dill import loads
torch.load(p)
torch.load(p, weights_only=False)
yaml.load(s)
yaml.unsafe_load(s)
eval("1")
exec("x = 1")
np.load(p, allow_pickle=True)
AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    good = """
torch.load(p, weights_only=True)
yaml.safe_load(s)
model.eval()
np.load(p)
AutoModel.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)
"""
    assert len(forbidden_calls(ast.parse(bad))) == 10
    assert forbidden_calls(ast.parse(good)) == []


def test_package_has_no_forbidden_calls():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the scan reads the package, not an empty dir
    found = []
    for path in files:
        rel = path.relative_to(SRC).as_posix()
        for line, what in forbidden_calls(ast.parse(path.read_text(), str(path))):
            if (rel, what) not in ALLOWED:
                found.append(f"{rel}:{line}: {what}")
    assert not found, "forbidden calls (fix them, or add them to ALLOWED with the reason):\n" + "\n".join(
        found
    )


def test_allow_list_entries_are_still_needed_and_justified():
    present = {
        (path.relative_to(SRC).as_posix(), what)
        for path in SRC.rglob("*.py")
        for _, what in forbidden_calls(ast.parse(path.read_text()))
    }
    for key, reason in ALLOWED.items():
        assert key in present, f"{key} is allowed but no longer occurs: remove it from ALLOWED"
        assert len(reason.split()) >= 4, f"{key}: say why it is safe"
