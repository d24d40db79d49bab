"""Import arrows point down only: app -> clients -> services' client APIs -> core (segxal).

Two checks per layer: every import statement in its source (including imports inside functions and
`importlib.import_module("...")` with a literal name), and what importing all of its modules
actually loads (in a fresh interpreter, so transitive imports count too).
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# layer -> the top-level packages it must never import
FORBIDDEN = {
    "segxal": ("services", "clients", "app", "bench"),
    "services": ("clients", "app", "bench"),
    "clients": ("app", "bench"),
    "app": ("bench",),
    "bench": (),  # benchmarks may import any layer; no layer imports them
}
# clients reach a service only through its client API (and the shared channel/health/auth helpers)
CLIENT_FACING = ("client", "api")


_MODULE_NAME = re.compile(r"(segxal|services|clients|app)(\.[a-z_][a-z0-9_]*)+")


def _modules(package: str) -> list[str]:
    root = REPO / package
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(module: str) -> list[tuple[int, str]]:
    """Every module name `module`'s source imports, with its line."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = REPO / module.replace(".", "/") / "__init__.py"
    return _imports_in(path)


def _imports_in(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            out.append((node.lineno, node.value))  # a name for importlib: a hidden import
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_source_imports_a_layer_above(layer):
    bad = [f"{m}:{line} imports {name}" for m in _modules(layer) for line, name in _imports(m)
           if _top(name) in FORBIDDEN[layer]]
    assert not bad, "\n".join(bad)


def test_clients_use_only_the_services_client_apis():
    bad = []
    for m in _modules("clients"):
        for line, name in _imports(m):
            parts = name.split(".")
            if parts[0] == "services" and not (parts[1:2] == ["common"] or parts[-1] in CLIENT_FACING):
                bad.append(f"{m}:{line} imports {name} (a service's internals)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", ["segxal", "services", "clients"])
def test_importing_a_layer_loads_nothing_above_it(layer):
    modules = [m for m in _modules(layer) if not m.endswith("__main__")]
    # a module that needs a runtime only its host provides (Triton's python backend) is skipped
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except ModuleNotFoundError as e:\n"
            f"        if e.name.split('.')[0] in {tuple(FORBIDDEN)!r}: raise\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    above = [m for m in loaded if _top(m) in FORBIDDEN[layer]]
    assert not above, f"importing {layer} loads {above}"


def test_services_never_import_the_active_learning_package():
    """The EEM options and the selection live in the core's own homes (segxal.eem.options,
    segxal.selection); segxal.al is the in-process loop's library, not a service dependency."""
    bad = [f"{m}:{line} imports {name}" for m in _modules("services") for line, name in _imports(m)
           if name == "segxal.al" or name.startswith("segxal.al.")]
    assert not bad, "\n".join(bad)


def test_the_scanner_sees_lazy_and_importlib_imports(tmp_path):
    """A lazy import and an import_module string are found (so the checks above can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from app import cli\n    import importlib\n"
                     "    importlib.import_module('services.loop')\n")
    names = [n for _, n in _imports_in(probe)]
    assert "app" in names and "services.loop" in names
