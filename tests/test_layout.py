"""The house's layout: rooms (subpackages) in layers, no reaching into another module's private names, modules
of a size one can read. The architecture test: a change that breaks the layering fails here, not in review."""

import ast
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parent.parent / "daemon"
REPO = DAEMON.parent
# Lowest first: a room may import from its own layer's modules and from the layers below it, never above.
LAYERS = [{"errors", "config", "journal", "process"}, {"store"}, {"models"}, {"data"}, {"ingest"}, {"gate"}, {"train"},
          {"serve"}, {"observe"}, {"service"}, {"cli"}]
RANK = {room: i for i, layer in enumerate(LAYERS) for room in layer}
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in DAEMON.rglob("*.py") if "migrations" not in p.parts)


def room(module: str) -> str:
    """daemon.gate.decision -> gate; daemon.cli -> cli."""
    return module.split(".")[1]


def daemon_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names, line) of every `from daemon... import` and `import daemon...` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "daemon":
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "daemon"]
    return out


def dotted(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_every_room_has_a_layer():
    rooms = {room(dotted(p)) for p in modules() if p.parent != DAEMON or p.name != "__init__.py"}
    assert rooms == set(RANK), f"rooms without a layer: {rooms - set(RANK)}; layers without a room: {set(RANK) - rooms}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(DAEMON)))
def test_imports_go_down_the_layers(path):
    here = dotted(path)
    if here == "daemon":
        return
    for module, names, line in daemon_imports(path):
        targets = [f"{module}.{n}" for n in names] if module == "daemon" else [module]
        for target in targets:
            assert RANK[room(target)] <= RANK[room(here)], (
                f"{path.relative_to(REPO)}:{line} imports {target}: {room(here)} sits below {room(target)}")


@pytest.mark.parametrize("path", modules() + sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "bench").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_another_modules_private_names(path):
    for module, names, line in daemon_imports(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{path.relative_to(REPO)}:{line} imports {private} from {module}"


@pytest.mark.parametrize("path", sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "bench").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_tests_and_benchmarks_use_each_rooms_public_surface(path):
    """``from daemon.gate import gate``, not ``from daemon.gate.decision import gate``: a room's __init__ is its
    surface. (``import daemon.ingest.reader as ...`` to patch a module's constant stays allowed.)"""
    for module, names, line in daemon_imports(path):
        if names:
            assert module.count(".") <= 1, f"{path.relative_to(REPO)}:{line}: import {names} from {module.rsplit('.', 1)[0]}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(DAEMON)))
def test_modules_stay_readable(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(REPO)} has {n} lines > {MAX_LINES}: split it by what its parts do"


def test_each_rooms_surface_exports_what_it_names():
    import importlib

    for init in sorted(DAEMON.glob("*/__init__.py")):
        pkg = importlib.import_module(dotted(init))
        missing = [n for n in getattr(pkg, "__all__", []) if not hasattr(pkg, n)]
        assert not missing, f"{dotted(init)}.__all__ names {missing}, which it does not define"
        assert getattr(pkg, "__all__", None), f"{dotted(init)} exports nothing: give it an __all__ of its entry points"


@pytest.mark.parametrize("path", sorted((REPO / "bench").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_import_of_a_benchmark_resolves_when_run_from_the_repository_root(path, monkeypatch):
    """Benchmarks run as ``python -m bench.NAME`` from the root: an import inside a function that names a module
    only a script's own folder had (``from benchmarks import ...``) would fail hours into a run."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO))
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            assert importlib.util.find_spec(name.split(".")[0]) is not None, (
                f"{path.relative_to(REPO)}:{node.lineno} imports {name}, which does not resolve from the root")


@pytest.mark.parametrize("path", sorted((REPO / "client" / "ragloop_client").glob("*.py")), ids=lambda p: p.name)
def test_the_client_never_imports_the_daemon(path):
    """Production installs ragloop_client alone: it may not reach into daemon (the daemon may use it)."""
    assert daemon_imports(path) == [], f"{path.relative_to(REPO)} imports the daemon"
    assert len(path.read_text().splitlines()) <= MAX_LINES
