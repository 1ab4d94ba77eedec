"""Static checks over ``filter_templates/`` that keep the code readable as it grows: every import
runs down the layer order docs/architecture.md writes (modules loaded by name through
``importlib.import_module`` included, and each such name a module that exists), no import cycle
between its modules, no import of the package's own modules inside a function (every dependency is
visible at the top of a module), no public function with more than 8 parameters (pass the config
object instead), no function longer than 80 lines. Parsed with ``ast``; nothing is imported.

``ALLOWED`` lists today's exceptions by name; each entry is a debt to pay, and a test fails when an
entry no longer occurs so the list only shrinks.
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from filter_templates.cli import COMMANDS, build_parser
from filter_templates.core.errors import UsageError

PACKAGE = "filter_templates"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"
MAX_PARAMS = 8
MAX_LINES = 80

# (check, "module:qualname" or "a -> b -> a" for a cycle): exceptions that still exist.
ALLOWED: set[tuple[str, str]] = set()

#: The functions that hand ``importlib`` a name known only at run time: the user's own code (a model
#: or template given as ``package.module:function``), never one of the package's modules.
USER_CODE = {
    "filter_templates.method.templates:resolve_template",
    "filter_templates.models.generic:_import",
    "filter_templates.models.torchvision_ops:import_module",  # the model's module, retried as that module says
}


def _layers() -> list[str]:
    """The package's layers, lowest first: the ``layers:`` line of docs/architecture.md."""
    found = re.search(r"^layers: (.+)$", ARCHITECTURE.read_text(encoding="utf-8"), re.M)
    assert found, f"{ARCHITECTURE} has no 'layers: a -> b -> ...' line"
    return [name.strip() for name in found[1].split("->")]


LAYERS = _layers()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name][0].name == "__init__.py"


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's own modules an import statement names (``from . import x`` names ``x`` when
    ``x`` is a module, otherwise the package itself)."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        return [b for b in bases if b == PACKAGE or b.startswith(PACKAGE + ".")]
    if node.level:
        anchor = module.split(".")
        if not _is_package(module):
            anchor = anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
        if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(module: str, tree: ast.Module, typing: bool = True) -> set[str]:
    """Imports a reader sees at the top of the module: those executed when it is imported (not
    inside functions) and, with ``typing``, those inside ``TYPE_CHECKING`` blocks (a cycle hidden
    from the interpreter is still a cycle to a reader and to a type checker)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_targets(module, node))
            elif _type_checking_block(node):
                if typing:
                    visit(node.body)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        visit(
                            [n for n in inner if isinstance(n, ast.stmt)]
                            + [s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body]
                        )

    visit(tree.body)
    found.discard(module)
    return found


def _tables(tree: ast.Module) -> dict[str, ast.Dict]:
    """The module-level dicts of the module, by name (tables of module names loaded later)."""
    out = {}
    for node in tree.body:
        target = (
            node.targets[0]
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            else getattr(node, "target", None)
        )
        if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Dict):
            out[target.id] = node.value
    return out


def _constants(nodes: list[ast.expr | None]) -> set[str] | None:
    if not all(isinstance(n, ast.Constant) and isinstance(n.value, str) for n in nodes):
        return None
    return {n.value for n in nodes if isinstance(n, ast.Constant)}


def _loop_names(tree: ast.Module, tables: dict[str, ast.Dict]) -> dict[str, set[str] | None]:
    """The strings a loop variable takes when the loop runs over a table (``for k in T``,
    ``for k, v in T.items()``, ``T.keys()``, ``T.values()``)."""
    out: dict[str, set[str] | None] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.For, ast.comprehension)):
            continue
        it, how = node.iter, "keys"
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and not it.args:
            it, how = it.func.value, it.func.attr
        if not (isinstance(it, ast.Name) and it.id in tables):
            continue
        keys, values = _constants(tables[it.id].keys), _constants(tables[it.id].values)
        names = node.target.elts if isinstance(node.target, ast.Tuple) else [node.target]
        parts = {"keys": [keys], "values": [values], "items": [keys, values]}.get(how, [])
        for name, strings in zip(names, parts):
            if isinstance(name, ast.Name):
                out[name.id] = strings
    return out


def _strings(node: ast.expr, module: str, tables: dict[str, ast.Dict], loops: dict) -> set[str] | None:
    """Every string ``node`` can be, read statically; None where it cannot be read."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name):
        if node.id == "__name__":
            return {module}
        if node.id == "__package__":
            return {module if _is_package(module) else module.rpartition(".")[0]}
        return loops.get(node.id)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in tables:
        return _constants(tables[node.value.id].values)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = _strings(value.value if isinstance(value, ast.FormattedValue) else value, module, tables, loops)
            if part is None:
                return None
            parts.append(sorted(part))
        return {"".join(p) for p in itertools.product(*parts)}
    return None


def _loaded_by_name(module: str, tree: ast.Module) -> tuple[set[str], set[str]]:
    """The package's modules that ``module`` hands to ``importlib.import_module``, and where it hands
    it a name that cannot be read statically (``module:function``)."""
    tables = _tables(tree)
    loops = _loop_names(tree, tables)
    where = {id(inner): f"{module}:{q}" for q, node, _ in _functions(tree) for inner in ast.walk(node)}
    names: set[str] = set()
    unread: set[str] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not call.args:
            continue
        func = call.func
        if not (getattr(func, "attr", None) == "import_module" or getattr(func, "id", None) == "import_module"):
            continue
        found = _strings(call.args[0], module, tables, loops)
        package = _strings(call.args[1], module, tables, loops) if len(call.args) > 1 else {""}
        if found is None or package is None:
            unread.add(where.get(id(call), f"{module}:<module>"))
            continue
        for name, anchor in itertools.product(found, package):
            full = anchor + name if name.startswith(".") else name
            if full == PACKAGE or full.startswith(PACKAGE + "."):
                names.add(full)
    return names, unread


def _layer(module: str) -> str | None:
    """The layer a module belongs to: its subpackage or top-level module (None: the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _layer_violations() -> set[tuple[str, str]]:
    """Imports that run up the documented order, modules no layer holds, names loaded by
    ``importlib`` that are no module, and names it is given that cannot be read."""
    out: set[tuple[str, str]] = set()
    rank = {name: i for i, name in enumerate(LAYERS)}
    for module, (_, tree) in MODULES.items():
        by_name, unread = _loaded_by_name(module, tree)
        out |= {("by-name", where) for where in unread if where not in USER_CODE}
        out |= {("missing-module", f"{module} -> {name}") for name in by_name if name not in MODULES}
        layer = _layer(module)
        if layer is None:
            continue  # the package's own names: the public API, above every layer
        if layer not in rank:
            out.add(("layer", f"{layer} is in no layer of {ARCHITECTURE.name}"))
            continue
        for target in _top_level_imports(module, tree) | by_name:
            other = _layer(target)
            if other is not None and rank.get(other, -1) > rank[layer]:
                out.add(("layer", f"{module} -> {target}"))
    return out


def _cycles() -> set[str]:
    graph = {m: _top_level_imports(m, tree) for m, (_, tree) in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[str] = set()

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(" <-> ".join(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _functions(tree: ast.Module):
    """(qualname, node, public) for every function; public: no underscore in its own name or any
    enclosing class's name (dunder methods of public classes count as public), and not nested."""

    def walk(body, prefix: str, public: bool, in_function: bool):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name
                own_public = not name.startswith("_") or (name.startswith("__") and name.endswith("__"))
                yield prefix + name, node, public and own_public and not in_function
                yield from walk(node.body, prefix + name + ".", False, True)
            elif isinstance(node, ast.ClassDef):
                yield from walk(
                    node.body, prefix + node.name + ".", public and not node.name.startswith("_"), in_function
                )
            else:
                for field in ("body", "orelse", "finalbody"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        yield from walk(inner, prefix, public, in_function)

    yield from walk(tree.body, "", True, False)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def _violations() -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = {("cycle", c) for c in _cycles()} | _layer_violations()
    for module, (_, tree) in MODULES.items():
        for qualname, node, public in _functions(tree):
            where = f"{module}:{qualname}"
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)) and _targets(module, inner):
                    out.add(("local-import", where))
            if public and _parameters(node) > MAX_PARAMS:
                out.add(("parameters", where))
            if node.end_lineno - node.lineno + 1 > MAX_LINES:
                out.add(("length", where))
    return out


VIOLATIONS = _violations()


CHECKS = ["layer", "missing-module", "by-name", "cycle", "local-import", "parameters", "length"]


@pytest.mark.parametrize("check", CHECKS)
def test_no_new_violation(check):
    new = sorted(where for kind, where in VIOLATIONS - ALLOWED if kind == check)
    assert not new, f"{check}: {new}"


def test_allow_list_only_shrinks():
    """An exception that no longer occurs leaves the list, so it cannot hide a new one later."""
    stale = sorted(ALLOWED - VIOLATIONS)
    assert not stale, f"fixed, remove from ALLOWED: {stale}"


def _imported_closure(module: str) -> set[str]:
    """Every package module that importing ``module`` executes."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_top_level_imports(m, MODULES[m][1], typing=False))
        parts = m.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES)
    return seen


#: What reads runs without training them; the run schema (training.config) is all of training it may see.
READERS = (
    "filter_templates.sweep.store",
    "filter_templates.sweep.grid",
    "filter_templates.sweep.plan",
    "filter_templates.report",
)
SCHEMA = {"filter_templates.training", "filter_templates.training.config"}


@pytest.mark.parametrize("reader", READERS)
def test_readers_of_runs_import_no_training_code(reader):
    reached = _imported_closure(reader)
    training = sorted(m for m in reached if m.split(".")[:2] == [PACKAGE, "training"] and m not in SCHEMA)
    assert not training, f"{reader} imports training code: {training}"
    assert "filter_templates.pruning.run" not in reached and "filter_templates.run" not in reached


#: The package's top level: its entry points and the few modules the layout names (docs/architecture.md).
TOP_LEVEL = {"__init__", "__main__", "api", "run", "reduction", "export"}


def test_top_level_holds_only_the_entry_points():
    files = {p.stem for p in ROOT.glob("*.py")}
    assert files == TOP_LEVEL, f"top-level modules besides the layout's: {sorted(files - TOP_LEVEL)}"


def test_checker_sees_each_kind():
    """The checker itself: each rule fires on a small example (the cycle hidden behind TYPE_CHECKING,
    an import up the layer order, one by name through importlib, a name that is no module)."""
    global MODULES
    source = {
        "filter_templates.core.a": "from . import b\n\ndef f(p1, p2, p3, p4, p5, p6, p7, p8, p9):\n"
        "    from .b import x\n" + "    y = 1\n" * 80,
        "filter_templates.core.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n",
        "filter_templates.core.c": "from filter_templates.cli import main\n",
        "filter_templates.core.d": "import importlib\n_BY_KEY = {'x': 'cli'}\n\ndef g(key):\n"
        "    return importlib.import_module(f'filter_templates.{_BY_KEY[key]}')\n",
        "filter_templates.core.e": "import importlib\n\ndef h(name):\n    importlib.import_module(name)\n"
        "    importlib.import_module('.nowhere', __package__)\n",
        "filter_templates.cli": "",
    }
    saved = MODULES
    try:
        MODULES = {
            name: (ROOT / "core" / (name.split(".")[-1] + ".py"), ast.parse(text)) for name, text in source.items()
        }
        MODULES[PACKAGE] = (ROOT / "__init__.py", ast.parse(""))
        MODULES["filter_templates.core"] = (ROOT / "core" / "__init__.py", ast.parse(""))
        found = _violations()
    finally:
        MODULES = saved
    assert {kind for kind, _ in found} == set(CHECKS)
    assert {w for k, w in found if k == "layer"} == {
        "filter_templates.core.c -> filter_templates.cli",
        "filter_templates.core.d -> filter_templates.cli",
    }
    assert {w for k, w in found if k == "missing-module"} == {
        "filter_templates.core.e -> filter_templates.core.nowhere"
    }
    assert {w for k, w in found if k == "by-name"} == {"filter_templates.core.e:h"}


def test_commands_import_model_code_through_one_function():
    """A command names a model only through ``cli.args.model_from_args``: the one place a flag
    imports a network's code (with --fix, --reading and the image size it is discovered at)."""
    loaders = {"resolve_model", "load_model"}
    users = {
        f"{module}:{qualname}"
        for module, (_, tree) in MODULES.items()
        if module.startswith(f"{PACKAGE}.cli")
        for qualname, node, _ in _functions(tree)
        if any(isinstance(n, ast.Name) and n.id in loaders for n in ast.walk(node))
    }
    assert users == {f"{PACKAGE}.cli.args:model_from_args"}


def test_the_documented_layers_name_every_part_of_the_package():
    parts = {_layer(m) for m in MODULES} - {None}
    assert parts == set(LAYERS), f"in the package, not the order: {parts - set(LAYERS)}; stale: {set(LAYERS) - parts}"


def test_help_and_version_import_no_torch():
    """``filter-templates --help`` lists the commands from the dispatch table without importing any
    command module, so it answers without loading torch (about a second)."""
    code = (
        "import sys\nfrom filter_templates.cli import main\n"
        "for argv in (['--help'], ['--version'], []):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert not [m for m in sys.modules if m.endswith('_cmd')], 'a command module imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name, line in COMMANDS.items():
        assert name in done.stdout and line.split()[0] in done.stdout


def test_a_command_builds_only_its_own_parser():
    parser = build_parser(["report"])
    with pytest.raises(UsageError, match="invalid choice"):
        parser.parse_args(["trian"])
    assert parser.parse_args(["report", "--out", "o"]).command == "report"
