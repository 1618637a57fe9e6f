"""ftjax's imports flow one way: entry points on top, models and data at the bottom.

Every import counts, at module level or inside a function (a late import hides a cycle, it does
not remove it). Each module belongs to the layer of its longest matching prefix in LAYERS and
may import only its own layer or lower ones; and no group of modules imports itself in a circle.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Top to bottom. A new module goes in the lowest layer whose imports it needs.
LAYERS = (
    ("entry points", ("ftjax.main", "ftjax.evaluate", "ftjax.export", "ftjax.data_report",
                      "ftjax.report", "ftjax.plan", "ftjax.chat", "ftjax.code_eval")),
    ("command line", ("ftjax.cli",)),
    ("training", ("ftjax.train",)),
    ("run services", ("ftjax.reports", "ftjax.samples", "ftjax.checkpoint", "ftjax.early_stopping",
                      "ftjax.metric_writers", "ftjax.progress", "ftjax.preemption",
                      "ftjax.workdir_lock", "ftjax.optim", "ftjax.sharding", "ftjax.config",
                      "ftjax.eval_slices", "ftjax.wandb_run")),
    ("tasks", ("ftjax.tasks", "ftjax.metrics", "ftjax.retrieval", "ftjax.generate")),
    ("methods", ("ftjax.methods",)),
    ("weights", ("ftjax.weights", "ftjax.models.registry")),
    ("models and data", ("ftjax.models", "ftjax.data")),
    ("foundations", ("ftjax.errors", "ftjax.sources", "ftjax.paths", "ftjax.malloc_tuning")),
)


def modules() -> dict[str, pathlib.Path]:
  found = {}
  for file in sorted((ROOT / "ftjax").rglob("*.py")):
    name = ".".join(file.relative_to(ROOT).with_suffix("").parts)
    found[name.removesuffix(".__init__")] = file
  return found


def import_graph() -> dict[str, set[str]]:
  """module -> the ftjax modules it imports anywhere in its file (a package's own __init__
  excluded: importing `ftjax.train.state` runs `ftjax/train/__init__.py` first, and inside the
  package that is no edge)."""
  mods = modules()

  def resolve(name: str) -> str | None:
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, file in mods.items():
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
      else:
        continue
      for name in names:
        target = resolve(name) if name.split(".")[0] == "ftjax" else None
        if target and target != module and not module.startswith(target + "."):
          targets.add(target)
    graph[module] = targets
  return graph


def layer_of(module: str) -> int:
  best, best_len = None, -1
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
        best, best_len = index, len(prefix)
  return best


def test_every_module_has_a_layer():
  missing = [m for m in modules() if m != "ftjax" and layer_of(m) is None]
  assert not missing, f"modules in no layer of {__name__}.LAYERS: {missing}"


def test_imports_only_go_down():
  upward = []
  for module, targets in import_graph().items():
    if module == "ftjax" or layer_of(module) is None:  # (the test above names it)
      continue
    for target in sorted(targets):
      if target != "ftjax" and layer_of(target) is not None and layer_of(target) < layer_of(module):
        upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                      f"({LAYERS[layer_of(target)][0]})")
  assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
  graph = import_graph()
  # Tarjan's strongly connected components: any component of two or more modules is a cycle.
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in graph.get(node, ()):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_nothing_imports_the_entry_points():
  entry = set(LAYERS[0][1]) | set(LAYERS[1][1])
  importers = {module: sorted(targets & entry) for module, targets in import_graph().items()
               if module not in entry and targets & entry}
  assert not importers, f"library modules importing entry points: {importers}"
  assert not [m for m, targets in import_graph().items() if "ftjax.main" in targets]
