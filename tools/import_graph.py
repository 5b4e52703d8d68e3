"""The library's import graph: modules, levels, circles, hidden imports, imports that run back up.

    python tools/import_graph.py            # the figures
    python tools/import_graph.py --verbose  # and every module with its level and imports

Read from the source with `ast` (nothing is imported). An import inside a function is "hidden"; an
import "runs back up" when it goes to a higher layer of `LAYERS` (docs/architecture.md), the order
data flows in: data -> presets -> models -> analysis -> deploy -> training -> programs.
tests/test_architecture.py holds the library to no circles, no hidden imports of its own modules
and nothing running back up.
"""

import argparse
import ast
import collections
import dataclasses
import sys
from pathlib import Path

PACKAGE = "glonet_keras"
# Low to high. A module's layer is that of its first name below the package (`data.base` -> data).
LAYERS = (
    ("version", "files", "layers", "skeleton", "plots"),
    ("data",),
    ("presets",),
    ("models",),
    ("analysis",),
    ("deploy",),
    ("training",),
    ("cli", "demo", "_deprecated", ""),
)


# v0.2's flat modules, placed in the layer they moved to (for the before/after figures).
V02_MODULES = {"augment": "data", "preprocessing": "data", "trainer": "training",
               "rundir": "training", "fastfit": "training", "distribute": "training",
               "callbacks": "training", "export": "deploy", "onnx_export": "deploy",
               "serving": "deploy"}


@dataclasses.dataclass
class Graph:
    modules: dict  # name -> path
    edges: dict  # name -> set of names imported at module level
    hidden: list  # (importer, imported) inside a function body

    def all_edges(self):
        edges = collections.defaultdict(set)
        for source, targets in self.edges.items():
            edges[source] |= targets
        for source, target in self.hidden:
            edges[source].add(target)
        return edges


def _module_names(root):
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _targets(node, current, modules):
    """The library modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = current.split(".")
            if not modules[current].name == "__init__.py":
                parts = parts[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != current:
            found.add(name)
    # Importing `a.b.c` runs the `__init__` of `a.b` first: an edge to each package above a target
    # that is not also above the importer (whose own packages are already being imported).
    own = {".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 1)}
    for name in list(found):
        parts = name.split(".")
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            if package not in own and package != current:
                found.add(package)
    return found


def read_graph(root):
    root = Path(root)
    modules = _module_names(root)
    edges, hidden = collections.defaultdict(set), []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, modules):
                    (hidden.append((name, target)) if id(node) in inside
                     else edges[name].add(target))
    return Graph(modules, dict(edges), hidden)


def circles(edges, nodes):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(nodes)))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def layer(module):
    first = module.split(".")[1] if "." in module else ""
    first = V02_MODULES.get(first, first)
    for number, names in enumerate(LAYERS):
        if first in names:
            return number
    raise KeyError(f"{module} is in no layer of tools/import_graph.py's LAYERS")


def upward(edges):
    """Imports into a higher layer."""
    return sorted((s, t) for s, ts in edges.items() for t in ts if layer(t) > layer(s))


def levels(edges, nodes):
    """Longest import chain below each module (1 + the deepest import), circles collapsed."""
    depth = {}

    def visit(v, seen):
        if v in depth:
            return depth[v]
        if v in seen:
            return 0
        seen = seen | {v}
        depth[v] = 1 + max((visit(w, seen) for w in edges.get(v, ())), default=-1)
        return depth[v]

    for v in nodes:
        visit(v, frozenset())
    return depth


def longest_chain(edges, depth):
    """One longest import chain, from the module with the most levels below it down to a leaf."""
    module = max(depth, key=lambda m: (depth[m], m))
    chain = [module]
    while True:  # Stops at a leaf, or where a circle would lead back into the chain.
        below = [m for m in edges.get(module, ()) if m not in chain]
        if not below:
            return chain
        module = max(below, key=lambda m: (depth[m], m))
        chain.append(module)


def summary(graph):
    edges = graph.all_edges()
    depth = levels(edges, graph.modules)
    return {
        "modules": len(graph.modules),
        "levels": 1 + max(depth.values()),
        "imports": sum(len(t) for t in graph.edges.values()),
        "hidden imports": len(graph.hidden),
        "circles": circles(edges, graph.modules),
        "imports that run back up": upward(edges),
        "longest chain": " -> ".join(
            m.replace(PACKAGE + ".", "") for m in longest_chain(edges, depth)),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=Path(__file__).parent.parent / PACKAGE)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    graph = read_graph(args.root)
    for key, value in summary(graph).items():
        print(f"{key}: {len(value) if isinstance(value, list) else value}"
              + (f"  {value}" if isinstance(value, list) and value else ""))
    if args.verbose:
        edges = graph.all_edges()
        depth = levels(edges, graph.modules)
        for module in sorted(graph.modules, key=lambda m: (depth[m], m)):
            print(depth[module], module, sorted(edges.get(module, ())))


if __name__ == "__main__":
    main()
