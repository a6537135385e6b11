"""The import contract: every module of ``streamflow/`` imports only from its own part and
the floors below it, per the layer table in docs/design.md (the block under "## Layers").

The table is read from the document, so the document and the check cannot drift apart.
Every import counts: module level, inside functions (lazy) and under ``TYPE_CHECKING``.
The checker is proven on synthetic modules below: an upward import, an import of a part
beside one's own and a module no floor names are each reported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "design.md"

Layers = list[list[str]]
"""Floors top down; each floor the dotted names of the parts side by side on it."""


def layers_from_design(text: str) -> Layers:
    """The floors of the first fenced block under the ``## Layers`` heading: one line a
    floor, top down, ``name | name  description`` (``x/`` a package, ``x.py`` a module)."""
    section = text.split("## Layers", 1)[1]
    block = section.split("```", 2)[1]
    floors: Layers = []
    for line in block.splitlines():
        if not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        floor = []
        for raw in names.split("|"):
            name = raw.strip()
            assert re.fullmatch(r"[a-z_]+(/[a-z_]+)*(/|\.py)", name), f"not a part: {name!r}"
            dotted = name.removesuffix("/").removesuffix(".py").replace("/", ".")
            floor.append(f"streamflow.{dotted}")
        floors.append(floor)
    return floors


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every ``streamflow`` import in the file; ``from a import b``
    names ``a.b`` when that is a module, else ``a``."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in modules else target


def import_graph(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Each module of the package at ``root`` -> its imports of that package's modules."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    return {
        mod: [
            (line, target)
            for line, target in imports_of(root, path, set(files))
            if target == top or target.startswith(top + ".")
        ]
        for mod, path in files.items()
    }


@dataclass(frozen=True)
class Place:
    floor: int  # 0 is the top floor
    part: str


def place_of(module: str, layers: Layers) -> Place | None:
    """The part a module belongs to: the longest part name that is it or a package of it."""
    best: Place | None = None
    for floor, parts in enumerate(layers):
        for part in parts:
            if (module == part or module.startswith(part + ".")) and (
                best is None or len(part) > len(best.part)
            ):
                best = Place(floor, part)
    return best


def violations(graph: Mapping[str, list[tuple[int, str]]], layers: Layers) -> list[str]:
    root = {m.split(".")[0] for m in graph}
    out = []
    for module, targets in sorted(graph.items()):
        if module in root:
            continue  # the top package itself (empty)
        here = place_of(module, layers)
        if here is None:
            out.append(f"{module}: on no floor of the layer table (add a line to docs/design.md)")
            continue
        for line, target in targets:
            there = place_of(target, layers)
            if target in root or there is None or there.part == here.part:
                continue  # an unplaced target is reported as a module of its own
            if there.floor < here.floor:
                out.append(f"{module}:{line} imports {target}: a floor above ({there.part})")
            elif there.floor == here.floor:
                out.append(f"{module}:{line} imports {target}: a part beside it ({there.part})")
    return out


CONCRETE_TRANSPORTS = {
    "streamflow.transport.kafka": set[str](),
    "streamflow.transport.local": {"streamflow.testing"},  # runs flows on the embedded one
}


def concrete_transport_imports(graph: Mapping[str, list[tuple[int, str]]]) -> list[str]:
    """Imports of a transport driver from outside ``streamflow.transport`` (the protocol
    is the only way in), but for the parts allowed in CONCRETE_TRANSPORTS."""
    out = []
    for module, targets in sorted(graph.items()):
        if module.startswith("streamflow.transport"):
            continue
        for line, target in targets:
            allowed = CONCRETE_TRANSPORTS.get(target)
            if allowed is not None and not any(
                module == a or module.startswith(a + ".") for a in allowed
            ):
                out.append(f"{module}:{line} imports {target}")
    return out


# -- the contract on the real code ------------------------------------------------------


def test_design_md_names_the_floors() -> None:
    layers = layers_from_design(DESIGN.read_text())
    assert layers[0] == ["streamflow.cli"]
    assert ["streamflow.runtime"] in layers and ["streamflow.triggers"] in layers
    assert layers.index(["streamflow.triggers"]) < layers.index(["streamflow.runtime"])


def test_every_import_points_down() -> None:
    layers = layers_from_design(DESIGN.read_text())
    graph = import_graph(REPO / "streamflow")
    assert len(graph) > 100  # the scan found the code
    assert violations(graph, layers) == []


def test_only_the_transport_package_names_a_transport() -> None:
    assert concrete_transport_imports(import_graph(REPO / "streamflow")) == []


# -- the checker itself, on synthetic modules -------------------------------------------

TABLE = """\
## Layers

```
cli/             top
runtime/         the loop
ingress.py       entry
util/ | steps/   side by side
errors.py        bottom
```
"""


def write_package(root: Path, files: Mapping[str, str]) -> Path:
    pkg = root / "streamflow"
    for rel, source in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name != "__init__.py":
            (path.parent / "__init__.py").touch()
        path.write_text(source)
    return pkg


def test_table_parsing() -> None:
    assert layers_from_design(TABLE) == [
        ["streamflow.cli"],
        ["streamflow.runtime"],
        ["streamflow.ingress"],
        ["streamflow.util", "streamflow.steps"],
        ["streamflow.errors"],
    ]


def test_downward_imports_pass(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "cli/main.py": "from streamflow.runtime.agent import Agent\n",
            "runtime/agent.py": "from streamflow import ingress\nfrom . import app\n",
            "runtime/app.py": "import streamflow.util.clock\n",
            "ingress.py": "from streamflow.errors import Bad\n",
            "util/clock.py": "from ..errors import Bad\n",
            "errors.py": "class Bad(Exception): ...\n",
        },
    )
    assert violations(import_graph(pkg), layers_from_design(TABLE)) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "util/clock.py",
            "from streamflow.runtime.agent import Agent\n",
            "streamflow.util.clock:1 imports streamflow.runtime.agent: a floor above "
            "(streamflow.runtime)",
        ),
        (
            "util/clock.py",
            "def later():\n    from ..runtime import agent\n",  # lazy and relative
            "streamflow.util.clock:2 imports streamflow.runtime.agent: a floor above "
            "(streamflow.runtime)",
        ),
        (
            "steps/base.py",
            "import typing\nif typing.TYPE_CHECKING:\n    import streamflow.util.clock\n",
            "streamflow.steps.base:3 imports streamflow.util.clock: a part beside it "
            "(streamflow.util)",
        ),
        (
            "gateway/web.py",
            "",
            "streamflow.gateway: on no floor of the layer table (add a line to docs/design.md)",
        ),
    ],
)
def test_an_upward_import_is_reported(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    pkg = write_package(
        tmp_path,
        {"runtime/agent.py": "", "util/clock.py": "", "steps/base.py": "", module: source},
    )
    assert expected in violations(import_graph(pkg), layers_from_design(TABLE))


def test_a_reach_into_a_transport_driver_is_reported(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "transport/kafka.py": "",
            "transport/local.py": "",
            "transport/__init__.py": "from streamflow.transport import kafka, local\n",
            "triggers/publish.py": "from streamflow.transport.kafka import KafkaProducer\n",
            "testing/flows.py": "from streamflow.transport.local import LocalTransport\n",
        },
    )
    assert concrete_transport_imports(import_graph(pkg)) == [
        "streamflow.triggers.publish:1 imports streamflow.transport.kafka"
    ]
