"""docs/architecture.md, enforced: every rlattn import points down the layers, the core never names
the plug-in, scripts hold no logic, and the tests have unique file names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# import name -> folder (credit/, rewards/ and rollouts/ install under rlattn.*)
PACKAGE_DIRS = {"rlattn": ROOT / "rlattn", "rlattn.credit": ROOT / "credit", "rlattn.rewards": ROOT / "rewards",
                "rlattn.rollouts": ROOT / "rollouts"}

# unit -> the units it may import (besides itself); a unit is rlattn.<first part>
UTILS = {"rlattn.utils"}
FOUNDATIONS = {"rlattn.credit", "rlattn.data", "rlattn.rewards"}
SERVICES = {"rlattn.tiny", "rlattn.models", "rlattn.rollouts"}
CORE = {"rlattn.config", "rlattn.cli", "rlattn.trainer", "rlattn.ppo", "rlattn.runs", "rlattn.dynamic_sampling", "rlattn.compact_head",
        "rlattn.shared_prompt"}
TOOLS = {"rlattn.eval", "rlattn.compare", "rlattn.inspector", "rlattn.analysis", "rlattn.testing"}
PLUGIN = {"rlattn.backbones"}
ALLOWED = {
    "rlattn.utils": set(),
    "rlattn.credit": UTILS,
    "rlattn.data": UTILS,
    "rlattn.rewards": UTILS | {"rlattn.data"},
    "rlattn.tiny": UTILS | FOUNDATIONS,
    "rlattn.models": UTILS | FOUNDATIONS | {"rlattn.tiny"},
    "rlattn.rollouts": UTILS | FOUNDATIONS | {"rlattn.models"},
    **{c: UTILS | FOUNDATIONS | SERVICES | CORE for c in CORE},
    **{t: UTILS | FOUNDATIONS | SERVICES | CORE | {"rlattn.eval"} for t in TOOLS},
    "rlattn.backbones": UTILS | FOUNDATIONS | SERVICES | CORE,
    "rlattn": UTILS | FOUNDATIONS | SERVICES,  # the package's own __init__
}
CORE_FILES = [ROOT / "rlattn" / f"{name}.py" for name in ("config", "cli", "trainer", "ppo", "runs")] + sorted(
    (ROOT / "credit").glob("*.py")) + sorted((ROOT / "rlattn" / "ppo").glob("*.py"))


def _module_name(path: Path) -> str:
    for name, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if folder in path.parents or path.parent == folder:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([name, *parts])
    raise AssertionError(path)


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    module = _module_name(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return [(line, t) for line, t in out if t == "rlattn" or t.startswith("rlattn.")]


def _library_files():
    return sorted(p for folder in PACKAGE_DIRS.values() for p in folder.rglob("*.py"))


def test_every_unit_is_placed_in_a_layer():
    units = {_unit(_module_name(p)) for p in _library_files()}
    assert units <= set(ALLOWED), f"add {sorted(units - set(ALLOWED))} to docs/architecture.md and this test"


def test_imports_point_down_the_layers():
    bad = []
    for path in _library_files():
        unit = _unit(_module_name(path))
        for line, target in _imports(path):
            t = _unit(target)
            if t != unit and t not in ALLOWED[unit]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({unit} may not import {t})")
    assert not bad, "\n".join(bad)


def test_nothing_outside_the_plugin_imports_it():
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in _library_files() if _unit(_module_name(p)) != "rlattn.backbones"
           for line, t in _imports(p) if _unit(t) == "rlattn.backbones"]
    assert not bad, bad


@pytest.mark.parametrize("path", [p for p in CORE_FILES if p.is_file()], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_names_the_plugin(path):
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"backbone|latent|cocova", line, re.IGNORECASE)]
    assert not hits, f"{path.relative_to(ROOT)} names the plug-in:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_hold_no_logic(path):
    tree = ast.parse(path.read_text())
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert [f.name for f in functions] == ["main"] and not classes, f"{path.name}: one main() and nothing else"
    main = functions[0]
    nested = [n for n in ast.walk(main) if n is not main and isinstance(n, (ast.FunctionDef, ast.Lambda, ast.For, ast.While,
                                                                          ast.ListComp, ast.DictComp, ast.GeneratorExp))]
    assert not nested, f"{path.name}: main() has loops or helpers at lines {[n.lineno for n in nested]}; move them into rlattn"


def test_test_file_names_are_unique():
    names = {}
    for p in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(p.name, []).append(str(p.relative_to(ROOT)))
    dupes = {k: v for k, v in names.items() if len(v) > 1}
    assert not dupes, dupes


def test_the_docs_the_code_cites_are_in_the_repo():
    cited = set()
    for path in _library_files():
        cited |= set(re.findall(r"\bdocs/([\w-]+\.md)", path.read_text()))
    # Only ``docs/NAME.md`` is a citation: bare names such as report.md are files a run writes
    # (and an untracked outputs/ folder must not decide this test).
    missing = sorted(c for c in cited if not (ROOT / "docs" / c).is_file())
    assert not missing, f"cited but not in the repo: {missing}"
