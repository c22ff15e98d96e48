"""The package's floors: every import points down, and no packages import each other in a circle.

Every module of ``instaseg`` is parsed with ``ast`` and every import is read: module level, inside
functions (the "import here to break a cycle" kind) and under ``TYPE_CHECKING``. ``from instaseg
import X`` counts as importing the module the package's lazy public API (``instaseg._API``) names for
``X``. Floors are compared at the level of the top-level packages (``instaseg.<package>``); circles
are looked for between packages and between modules.

The floors, bottom to top (a package may import its own floor and the floors below it):

1. ``errors``: the exception types everyone raises.
2. ``config``: frozen dataclasses, presets, overrides; plain values, no tensors.
3. ``structures``: boxes, masks, ``Instances``: the data every floor above passes around.
4. ``ops``: tensor operations on structures (RoIAlign, NMS, paste, crop); structures never need
   them (``crop_and_resize`` is an op, not a mask structure).
5. ``layers``: building blocks made of ops.
6. ``backbones``, ``necks``, ``heads``, ``targets``: the parts of a detector, each usable alone;
   ``targets`` turns ground truth into what heads predict.
7. ``losses``: plain functions of predictions and targets.
8. ``detectors``: the only place that wires parts together (config -> modules). Nothing a model
   needs lives above it, so a model never depends on datasets, weights files, training or export.
9. ``data``, ``evaluation``: images and annotations in, COCO metrics out; independent of any model.
10. ``viz``: pictures of data and results.
11. ``weights``: pure state-dict converters (peer dict in, instaseg dict + config out). Above the
    model floors so that no model code reads peer checkpoints; they build nothing and save nothing.
12. ``engine``, ``export``: train, evaluate and measure, or export, a model that keeps the detector
    contract; neither builds one (the caller hands it over).
13. ``zoo``: the catalogue of published weights, their download and cache, and the input conventions
    ImageNet backbone files need: files and config values, no model.
14. ``hub``: the top floor every front end uses: build a model from a preset or config, load a
    checkpoint, apply ImageNet or published weights, save converted checkpoints, ``Predictor``.
15. ``serve``: the web page, HTTP API and dataset review of ``instaseg serve``, around a model the hub
    loads (or a caller hands over).
16. ``cli`` (and ``__main__``): commands, on top of everything.

The package's ``__init__`` (version and the lazy public names) sits outside the floors: it names
modules by string and imports nothing, so ``import instaseg`` stays light.

Floors order what may be imported; a few packages must also keep away from a floor below them
(:data:`APART`): ``engine`` trains, evaluates and measures the model it is handed, so it never
imports ``detectors`` (the CLI and ``instaseg.hub`` build the model and pass it, or a factory, in).
The one exception is the contract itself (:data:`CONTRACTS`): ``detectors/base.py`` declares what
``forward``, ``loss``, ``postprocess`` and ``predict`` take and return, imports nothing above
``structures``, and is what the engine types the model it is handed against.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import instaseg

FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config",),
    ("structures",),
    ("ops",),
    ("layers",),
    ("backbones", "necks", "heads", "targets"),
    ("losses",),
    ("detectors",),
    ("data", "evaluation"),
    ("viz",),
    ("weights",),
    ("engine", "export"),
    ("zoo",),
    ("hub",),
    ("serve",),
    ("cli", "__main__"),
)
# package -> packages below it that it must not import all the same
APART: dict[str, tuple[str, ...]] = {"engine": ("detectors",)}
# modules of a kept-apart package that declare a contract and may be imported all the same
CONTRACTS = frozenset({"instaseg.detectors.base"})
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}
ROOT = Path(instaseg.__file__).parent


@dataclass(frozen=True)
class Import:
    """``source`` (a module of the package) imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    @property
    def source_package(self) -> str:
        return _package(self.source)

    @property
    def target_package(self) -> str:
        return _package(self.target)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def _package(module: str) -> str:
    """``instaseg.detectors.build`` -> ``detectors``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _public_api() -> dict[str, str]:
    """``instaseg._API``: public name -> the module it is read from (parsed, not imported)."""
    for node in ast.walk(ast.parse((ROOT / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _targets(node: ast.AST, module: str, is_package: bool, api: dict[str, str]) -> list[str]:
    """The ``instaseg`` modules an import statement reads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against this module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name != "instaseg":
        return [name]
    found = []
    for alias in node.names:  # from instaseg import detectors / build_model / __version__
        if (ROOT / alias.name).is_dir() or (ROOT / f"{alias.name}.py").is_file():
            found.append(f"instaseg.{alias.name}")
        elif alias.name in api:
            found.append(api[alias.name])
        else:
            found.append("instaseg")
    return found


@functools.lru_cache(maxsize=1)
def module_imports() -> tuple[Import, ...]:
    """Every import of an ``instaseg`` module by another, anywhere in a module; ``target`` is the
    module imported (``from instaseg.ops.nms import nms`` -> ``instaseg.ops.nms``)."""
    api = _public_api()
    paths = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    found = []
    for path in paths:
        module = _module_name(path)
        if module == "instaseg":  # the lazy public API: names modules by string only
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py", api):
                if target.split(".")[0] != "instaseg" or target == "instaseg":
                    continue
                while target not in modules and "." in target:  # a name imported from a module
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    found.append(Import(module, target, str(path.relative_to(ROOT.parent)), node.lineno))
    return tuple(found)


def package_imports() -> list[Import]:
    """Every import of one ``instaseg`` package by another."""
    return [i for i in module_imports() if i.source_package != i.target_package]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_every_package_has_a_floor():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    packages |= {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    missing = sorted(packages - set(FLOOR))
    assert not missing, f"packages without a floor (add them to FLOORS in {__name__}): {missing}"


def test_the_import_walk_sees_imports_inside_functions():
    # instaseg/cli imports the package only inside its command functions: the walk must see them.
    sources = {(i.source_package, i.target_package) for i in package_imports()}
    assert ("cli", "config") in sources and ("cli", "engine") in sources


def test_no_package_imports_a_higher_floor():
    upward = [i for i in package_imports() if FLOOR[i.target_package] > FLOOR[i.source_package]]
    report = "\n".join(f"  {i}  ({i.source_package}: floor {FLOOR[i.source_package] + 1}, "
                       f"{i.target_package}: floor {FLOOR[i.target_package] + 1})" for i in upward)
    assert not upward, f"{len(upward)} imports of a higher floor:\n{report}"


def test_packages_kept_apart_do_not_import_each_other():
    found = [i for i in package_imports()
             if i.target_package in APART.get(i.source_package, ()) and i.target not in CONTRACTS]
    report = "\n".join(f"  {i}  ({i.source_package} must not import {i.target_package})" for i in found)
    assert not found, f"{len(found)} imports between packages kept apart:\n{report}"


def test_contracts_import_nothing_above_structures():
    """A contract module may be imported past a kept-apart rule only while it brings no detector
    code along: it reads nothing above ``structures``."""
    found = [i for i in module_imports() if i.source in CONTRACTS and FLOOR[i.target_package] > FLOOR["structures"]]
    assert not found, "contract modules import above structures:\n" + "\n".join(f"  {i}" for i in found)


def _circles(imports: Sequence[Import], node: Callable[[Import], tuple[str, str]], kind: str) -> list[str]:
    """One line per circle among ``node(import) = (source, target)`` edges, then the imports that make it."""
    edges: dict[str, set[str]] = defaultdict(set)
    examples: dict[tuple[str, str], Import] = {}
    for item in imports:
        source, target = node(item)
        edges[source].add(target)
        examples.setdefault((source, target), item)
    lines = []
    for component in _cycles(edges):
        lines.append(f"  {kind} importing each other: {', '.join(component)}")
        members = set(component)
        lines += [f"    {examples[(a, b)]}" for a in component for b in sorted(edges[a] & members)]
    return lines


def test_no_import_circle_between_packages():
    lines = _circles(package_imports(), lambda i: (i.source_package, i.target_package), "packages")
    assert not lines, "import circles:\n" + "\n".join(lines)


def test_no_import_circle_between_modules():
    # Inside a package too: a circle held together by imports inside functions is still a circle.
    lines = _circles(module_imports(), lambda i: (i.source, i.target), "modules")
    assert not lines, "import circles:\n" + "\n".join(lines)
