"""The package's floors, checked from the import statements of every module (parsed, not imported).

A module may import from its own floor and the floors below, never from a floor above: the model and its
files know nothing of how they are trained, served or driven from the command line. Lazy imports inside
functions count too. The table is the one drawn in the README's architecture section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "realm"
MAX_LINES = 450

# First name under `realm.` -> floor. Lower numbers are closer to the ground.
FLOORS = {
    # 0: files, configs, process topology and the paper's math: import nothing of the package above them
    "atomic": 0, "files": 0, "inputs": 0, "config": 0, "schema": 0, "distributed": 0, "objectives": 0,
    # 1-2: text -> ids -> blocks
    "tokenization": 1,
    "corpus": 2,
    # 3: the models, the indexes, and the one retrieve and read they are used through
    "modeling": 3, "index": 3, "retrieval": 3, "qa": 3,
    # 4: question answering over a corpus, evaluation, what both training loops share
    "pipeline": 4, "bundle": 4, "verify": 4, "eval": 4, "train": 4,
    # 5: the two training loops
    "finetune": 5, "pretrain": 5,
    # 6: entry points
    "serve": 6, "demo": 6, "cli": 6, "doctor": 6,
}  # fmt: skip


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _room(path: Path) -> str | None:
    """The floor name of a module of the package (None for `realm/__init__.py`, which re-exports)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts == ("__init__",):
        return None
    return parts[0]


def _imported_rooms(path: Path) -> list[tuple[int, str]]:
    """(line, first name under realm.) of every `realm.*` import in the module, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "realm" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_room_has_a_floor() -> None:
    rooms = {_room(p) for p in _modules()} - {None}
    missing = sorted(r for r in rooms if r not in FLOORS)
    assert not missing, f"put these modules/packages of src/realm on a floor in tests/test_layering.py: {missing}"


def test_no_module_imports_from_a_floor_above() -> None:
    violations = []
    for path in _modules():
        room = _room(path)
        if room is None:
            continue
        for line, target in _imported_rooms(path):
            if target in FLOORS and FLOORS[target] > FLOORS[room]:
                violations.append(
                    f"{path.relative_to(SRC.parent)}:{line}: {room} (floor {FLOORS[room]}) imports "
                    f"realm.{target} (floor {FLOORS[target]})"
                )
    assert not violations, "imports that reach up a floor:\n" + "\n".join(violations)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC.parent)} has {lines} lines (> {MAX_LINES}): split it"
