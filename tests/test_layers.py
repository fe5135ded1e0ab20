"""The library's shape: imports point down the five layers, never round in a cycle, only the
interfaces import ``workers``, and no library module passes 500 lines.

Every import is read with ``ast`` (at module level and inside functions, absolute and relative),
so a late import inside a function counts like any other. ``LAYERS`` is the one map of the
layers: every module under ``pipeline/`` and ``workers/`` must fall in it, so a new module is
placed on purpose. ``ALLOWED`` lists what the tree still does wrong today; the test fails on
anything not in it, and on an entry that no longer happens, so the list can only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

DOMAIN, ADAPTERS, ENGINE, OUTPUTS, INTERFACES = 1, 2, 3, 4, 5
LAYER_NAMES = {1: "domain", 2: "adapters", 3: "engine", 4: "outputs", 5: "interfaces"}
MAX_LINES = 500

# A module or package, and the layer of everything in it (the longest matching name wins).
LAYERS: dict[str, int] = {
    # The manifest, plans and run keys, model specs, money; pure Python, no I/O clients.
    "pipeline": DOMAIN,  # the package's __init__: errors and settings re-exported
    "pipeline.errors": DOMAIN,
    "pipeline.settings": DOMAIN,
    "pipeline.logs": DOMAIN,  # the log line's format (text or JSON), the run it is about, secrets redacted
    "pipeline.modelspec": DOMAIN,
    "pipeline.manifest": DOMAIN,
    "pipeline.plan": DOMAIN,
    "pipeline.run": DOMAIN,  # a run and its run key, as every layer passes them
    "pipeline.blueprint": DOMAIN,  # the parts a plan's runs share; run i built from them
    "pipeline.size": DOMAIN,  # a plan's runs, cost and dimensions, by arithmetic
    "pipeline.ledger": DOMAIN,
    "pipeline.layout": DOMAIN,
    "pipeline.records": DOMAIN,
    "pipeline.failures": DOMAIN,  # why a run failed (a closed set of kinds), and which failures pass
    "pipeline.callbacks": DOMAIN,  # a run's signed callback URL
    "pipeline.webhook_signature": DOMAIN,  # the provider's webhook signature, checked
    "pipeline.schedules_file": DOMAIN,  # the schedules file, read and validated  # a run's result and a ledger line, as typed values  # where a job's files live under its output root
    # The provider client, storage, the state layer (the only holder of a Redis client),
    # and what reads outside sources for them.
    "pipeline.provider": ADAPTERS,
    "pipeline.simulator": ADAPTERS,  # the provider's stand-in, served over HTTP
    "pipeline.storage": ADAPTERS,
    "pipeline.catalog": ADAPTERS,  # feeds and folders, read over http, S3 or the file system
    "pipeline.run_index": ADAPTERS,
    "pipeline.state": ADAPTERS,
    "pipeline.thumbnails": ADAPTERS,  # made while a run is collected, and shown by the report
    # Limits, dispatch, the steps of a run, recovery.
    "pipeline.limits": ENGINE,
    "pipeline.dispatch": ENGINE,
    "pipeline.adoption": ENGINE,  # a lost submit answer found among the recent predictions
    "pipeline.execution": ENGINE,
    "pipeline.checks": ENGINE,  # an output judged at collection: aspect ratio, size, nsfw flag, changed
    "pipeline.submission": ENGINE,
    "pipeline.reconcile": ENGINE,
    "pipeline.schedules": ENGINE,
    "pipeline.recovery": ENGINE,  # a job whose Redis state was lost, rebuilt from storage
    "pipeline.regenerate": ENGINE,  # a rejected run made again as a new variant of the same job
    # Records, reports, notifications, metrics.
    "pipeline.report": OUTPUTS,
    "pipeline.notify": OUTPUTS,
    "pipeline.alerts": OUTPUTS,  # budget alerts claimed in Redis, POSTed once each
    "pipeline.publish": OUTPUTS,  # approved outputs copied to publish.to, idempotently
    "pipeline.review": OUTPUTS,  # people's decisions on a job's outputs, appended to review.jsonl
    "pipeline.metrics": OUTPUTS,  # the fleet's Prometheus metrics, over the state layer's snapshot
    # The CLI, the Celery app and its tasks, the webhook server, the local stack of `run`.
    "pipeline.cli": INTERFACES,
    "pipeline.cli.run": INTERFACES,  # `editpipe run`: continue after a kill, stop cleanly on Ctrl-C
    "pipeline.cli.progress": INTERFACES,  # a bar on a terminal, plain lines in a log
    "pipeline.cli.review": INTERFACES,  # `editpipe review JOB`: decisions from the command line
    "pipeline.cli.publish": INTERFACES,  # `editpipe publish JOB [--dry-run]`
    "pipeline.cli.job_root": INTERFACES,  # where a finished job's records are (Redis, or --output)
    "pipeline.cli.metrics_server": INTERFACES,  # `editpipe metrics-server`
    "pipeline.cli.top": INTERFACES,  # `editpipe top`: the live terminal view
    "pipeline.webhooks": INTERFACES,
    "pipeline.review_server": INTERFACES,  # the review page's server: decisions, regenerate, CSRF
    "pipeline.embedded": INTERFACES,
    "workers": INTERFACES,
    "workers.takeover": INTERFACES,  # a dead embedded run's broker messages, and the wake-up
}

# What the tree does wrong today, each with why it is still here. Keys as ``check`` makes them.
ALLOWED: dict[str, str] = {
}


def modules_under(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of these packages by dotted name (a package's name is its ``__init__``)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, anywhere in its body except under
    ``if TYPE_CHECKING:`` (names for annotations only: never executed, so they create no
    dependency at run time and cannot close a cycle)."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from a import b` imports the module a.b when there is one, else names in a.
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    targets = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those inside an ``if TYPE_CHECKING:`` block."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    name = module
    while name:
        if name in layers:
            return layers[name]
        name = name.rpartition(".")[0]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(root: Path, packages: tuple[str, ...], layers: dict[str, int], library: str,
          max_lines: int = MAX_LINES) -> dict[str, str]:
    """Every violation under ``root``, keyed as ``ALLOWED`` is, with a line that explains it."""
    known = modules_under(root, packages)
    graph = {module: imports_of(module, path, known) for module, path in known.items()}
    found: dict[str, str] = {}
    for module in known:
        if layer_of(module, layers) is None:
            found[f"unplaced: {module}"] = f"{module} is in no layer: add it to LAYERS"
    for names in cycles(graph):
        found["cycle: " + ", ".join(names)] = "these modules import each other, directly or round a loop"
    for module, targets in graph.items():
        here = layer_of(module, layers)
        for target in sorted(targets):
            there = layer_of(target, layers)
            if here is None or there is None:
                continue
            if target.split(".")[0] == "workers" and here != INTERFACES:
                found[f"{module} -> {target}"] = f"{module} ({LAYER_NAMES[here]}) imports workers: only the interfaces may"
            elif there > here:
                found[f"{module} -> {target}"] = (f"{module} ({LAYER_NAMES[here]}) imports {target} "
                                                  f"({LAYER_NAMES[there]}), a layer above it")
    for module, path in known.items():
        lines = len(path.read_text().splitlines())
        if module.split(".")[0] == library and lines > max_lines:
            found[f"size: {module}"] = f"{path.relative_to(root)} has {lines} lines, more than {max_lines}"
    return found


def test_imports_point_down_the_layers_without_cycles_and_only_interfaces_import_workers():
    found = check(ROOT, ("pipeline", "workers"), LAYERS, library="pipeline")

    new = {key: why for key, why in found.items() if key not in ALLOWED}
    gone = sorted(key for key in ALLOWED if key not in found)
    assert not new, "new layer violations:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(new.items()))
    assert not gone, "fixed, so take them out of ALLOWED:\n" + "\n".join(f"  {k}" for k in gone)


def test_the_check_finds_a_cycle_an_upward_import_a_workers_import_a_long_module_and_an_unplaced_one(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/low.py": "def later():\n    from .high import thing\n    return thing\n",
        "pkg/high.py": "from pkg import low\nthing = low\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/reader.py": "import workers.app\n" + "x = 1\n" * 20,
        "pkg/stray.py": "from . import low\n",
        # Annotations only: not an upward import, and no cycle with pkg.high.
        "pkg/typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from .high import thing\n",
        "workers/__init__.py": "",
        "workers/app.py": "from pkg import low\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = {"pkg.low": 1, "pkg.high": 2, "pkg.sub": 1, "pkg.typed": 1, "workers": 5}  # "pkg" and "pkg.stray" in none

    found = check(tmp_path, ("pkg", "workers"), layers, library="pkg", max_lines=10)

    assert set(found) == {
        "cycle: pkg.high, pkg.low",
        "pkg.low -> pkg.high",
        "pkg.sub.reader -> workers.app",
        "size: pkg.sub.reader",
        "unplaced: pkg",
        "unplaced: pkg.stray",
    }
