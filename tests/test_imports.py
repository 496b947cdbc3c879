"""Imports point one way: no cycles between servegym's modules, and a function imports inside its body only
to defer a heavy optional dependency (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"envs": "servegym.envs", "agents": "servegym.agents", "baselines": "servegym.baselines"}
# what may be imported inside a function: heavy optional dependencies, and the modules that pull them in
DEFERRABLE = (
    "torch",
    "stable_baselines3",
    "sb3_contrib",
    "matplotlib",
    "ray",
    "minari",  # the offline extra (agents/demos.py)
    "tqdm",
    "scipy",  # ~0.4 s to import; only the SageServe controller plans with it
    "fcntl",  # POSIX only: the leaderboard's cache lock
    "servegym.agents.ppo",  # torch
    "servegym.agents.train",  # torch, SB3
    "servegym.agents.extractors",  # torch
    "servegym.agents.callbacks",  # SB3
    "servegym.agents.bc",  # torch
    "servegym.agents.native",  # torch
    "servegym.envs.gym.sb3",  # SB3
    "servegym.envs.gym.render",  # matplotlib
    "servegym.baselines.plots",  # matplotlib
)


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def imported(node: ast.AST, mods: dict[str, Path]) -> list[str]:
    """The modules an import statement names (``from pkg import submodule`` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
        return subs if len(subs) == len(node.names) else [node.module, *subs]
    return []


def test_no_import_cycles():
    mods = modules()
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            graph[m] |= {
                n for n in imported(node, mods) if n in mods and n != m and not m.startswith(n + ".")
            }
    # a module reaches itself only through a cycle
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_deferred_imports_only_for_heavy_optional_dependencies():
    mods = modules()
    bad = []
    for f in mods.values():
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                for name in imported(node, mods):
                    if name == "__future__" or any(name == d or name.startswith(d + ".") for d in DEFERRABLE):
                        continue
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "imports inside functions (move them to the top):\n" + "\n".join(sorted(set(bad)))


def test_layers_below_the_leaderboard_do_not_import_it():
    """config -> workload -> sim core -> env -> policy -> metrics -> leaderboard: the envs and the agents
    (the policy layer) never import the leaderboard; scripts read suites and hand the policy layer plain data."""
    mods = modules()
    bad = []
    for m, f in mods.items():
        if not m.startswith(("servegym.envs", "servegym.agents")):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            bad += [
                f"{m} imports {n}"
                for n in imported(node, mods)
                if n.startswith("servegym.baselines.leaderboard")
            ]
    assert not bad, "\n".join(bad)
