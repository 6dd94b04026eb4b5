"""The layers of docs/architecture.md, checked on the source: who may import whom, no
import circles, no endpoint module importing another. Reads the code; runs nothing."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from server.launch import ROOT

PACKAGES = ("server", "retrieval", "config")
# A layer may import itself and what is listed (prefixes of module names).
ALLOWED = {
    "server.llama": ("server.llama",),
    "server.engine": ("server.engine", "server.llama"),
    "retrieval": ("retrieval", "server.errors", "server.ids", "server.engine.embedder"),
    "server.chat": (
        "server.chat",
        "server.engine",
        "server.llama",
        "server.async_engine",
        "server.errors",
        "server.ids",
        "server.settings",
        "retrieval",
    ),
}
ENDPOINTS = (
    "server.api.chat",
    "server.api.chat_page",
    "server.api.completions",
    "server.api.embeddings",
    "server.api.files",
    "server.api.models",
    "server.api.rerank",
    "server.api.responses",
    "server.api.status",
    "server.api.tokenize",
    "server.api.vector_stores",
)


def module_graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> str | None:
    return next((layer for layer in ALLOWED if module.startswith(layer)), None)


def endpoint_of(module: str) -> str | None:
    return next((e for e in ENDPOINTS if module == e or module.startswith(e + ".")), None)


def test_each_layer_imports_only_what_it_may() -> None:
    wrong = []
    for module, targets in module_graph().items():
        layer = layer_of(module)
        if layer is None:
            continue
        wrong += [(module, t) for t in targets if not t.startswith(ALLOWED[layer])]
    assert wrong == []


def test_no_endpoint_module_imports_another() -> None:
    wrong = []
    for module, targets in module_graph().items():
        mine = endpoint_of(module)
        if mine is not None:
            wrong += [(module, t) for t in targets if endpoint_of(t) not in (None, mine)]
    assert wrong == []


def test_no_import_circles() -> None:
    graph = module_graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
