"""The house's rooms: bot -> models <- training, no cycles, and no fastai in the bot (every import, also
those inside functions)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("bot", "models", "training")


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def graph() -> dict[str, set[str]]:
    modules = {f"{room}.{p.stem}": p for room in ROOMS for p in (ROOT / room).glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_arrows_go_one_way():
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if (a.startswith("bot.") and b.startswith("training.")) or
             (a.startswith("models.") and b.split(".")[0] in ("bot", "training"))]
    assert wrong == []


def test_the_bot_never_imports_fastai():
    offenders = [p.name for p in (ROOT / "bot").glob("*.py") if any(m.split(".")[0] == "fastai" for m in imports_of(p))]
    assert offenders == []


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_scan_sees_imports_inside_functions():
    g = graph()
    assert "training.train" in g["training.cli"]  # imported inside cmd_train only
    assert "models.engine" in g["bot.app"]
