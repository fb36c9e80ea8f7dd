"""bench/ never reaches into tests/, and its modules import one another without a cycle."""

from __future__ import annotations

import ast

from bench import ROOT


def bench_imports() -> dict[str, set[str]]:
    """Module -> the modules it imports (anywhere in it, function bodies too), for bench/."""
    modules = {}
    for path in (ROOT / "bench").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        imports[name] = {m for m in found if m in modules or m.split(".")[0] == "tests"} - {name}
    return imports


def cycle_from(start: str, imports: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports that leads from ``start`` back to it, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, chain = stack.pop()
        for imported in imports.get(module, ()):
            if imported == start:
                return [*chain, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*chain, imported]))
    return None


def test_bench_never_imports_tests() -> None:
    from_tests = {
        module: sorted(i for i in imported if i.split(".")[0] == "tests")
        for module, imported in bench_imports().items()
    }
    assert not {module: found for module, found in from_tests.items() if found}


def test_bench_modules_import_each_other_without_cycles() -> None:
    imports = bench_imports()
    cycles = [chain for module in imports if (chain := cycle_from(module, imports))]
    assert not cycles, cycles[0]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": set()}) is None
