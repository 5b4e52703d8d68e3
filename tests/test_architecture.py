"""The package's shape: imports flow one way (docs/architecture.md), and v0.2's paths still work."""

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import glonet_keras
from glonet_keras import _deprecated
from tools import import_graph

LIBRARY = Path(glonet_keras.__file__).parent


def test_the_library_has_no_circles_no_hidden_imports_and_nothing_running_back_up():
    figures = import_graph.summary(import_graph.read_graph(LIBRARY))
    assert figures["circles"] == []
    assert figures["hidden imports"] == 0
    assert figures["imports that run back up"] == []


def _package(tmp_path, files):
    root = tmp_path / "glonet_keras"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph.summary(import_graph.read_graph(root))


def test_the_checker_finds_a_circle_a_hidden_import_and_an_import_running_back_up(tmp_path):
    figures = _package(tmp_path, {
        "__init__.py": "",
        "layers.py": "def f():\n    from glonet_keras import skeleton\n",
        "skeleton.py": "from glonet_keras import layers\n",
        "data/__init__.py": "from glonet_keras.models import mlp\n",
        "models/__init__.py": "",
        "models/mlp.py": "from glonet_keras import data\n",
    })
    assert figures["hidden imports"] == 1
    assert ["glonet_keras.layers", "glonet_keras.skeleton"] in figures["circles"]
    assert ("glonet_keras.data", "glonet_keras.models.mlp") in figures["imports that run back up"]


def test_every_module_is_in_a_layer_and_every_subpackage_names_its_api():
    for module in import_graph.read_graph(LIBRARY).modules:
        import_graph.layer(module)  # Raises for a module no layer holds.
    for init in LIBRARY.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init} has no docstring"
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)}
        if init.parent.name != "cli":  # The programs' package exports no API.
            assert "__all__" in names, f"{init} does not state its public names"
            module = importlib.import_module(f"glonet_keras.{init.parent.name}")
            missing = [name for name in module.__all__ if not hasattr(module, name)]
            assert not missing, f"{init}: __all__ names {missing}, which it does not define"


def test_the_library_imports_nothing_from_the_programs_the_zoo_or_the_benchmarks():
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"training", "zoo", "benchmarks", "tools",
                                                   "tests"}, f"{path} imports {name}"


@pytest.mark.parametrize("old", sorted(_deprecated.MOVED_MODULES))
def test_a_v02_module_path_still_imports_the_same_module_with_a_warning(old):
    new = importlib.import_module(_deprecated.MOVED_MODULES[old])
    importlib.sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new.__name__}"):
        assert importlib.import_module(old) is new


def test_the_version_is_the_release_that_moved_the_paths_and_before_the_one_that_drops_them():
    # The shims promise "moved in v0.3, gone in v0.4": the version must say where between.
    from packaging.version import Version

    version = Version(glonet_keras.__version__)
    assert Version("0.3.0.dev0") <= version < Version(_deprecated.REMOVED_IN), version


def test_analysis_keeps_the_depth_functions_it_re_exported_for_one_release():
    from glonet_keras import analysis, deploy

    model = glonet_keras.GloNetMLP(num_blocks=3, width=4, input_shape=(5,), num_classes=2)
    x = __import__("numpy").random.default_rng(0).normal(size=(16, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = deploy.choose_depth(model, (x, y))
    with pytest.warns(DeprecationWarning, match="glonet_keras.deploy.choose_depth"):
        assert analysis.choose_depth(model, (x, y)) == expected


def _private_borrowings(path):
    """`module._name` uses in `path` where `module` is a library module it imported."""
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glonet_keras"):
            imported |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.asname or alias.name for alias in node.names
                         if alias.name.startswith("glonet_keras")}
    return sorted(f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in imported and node.attr.startswith("_")
                  and not node.attr.startswith("__"))


def test_no_library_module_borrows_another_modules_private_names():
    borrowed = {str(path.relative_to(LIBRARY)): _private_borrowings(path)
                for path in LIBRARY.rglob("*.py")}
    assert {path: names for path, names in borrowed.items() if names} == {}


def test_the_borrowing_check_sees_a_private_name(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from glonet_keras.deploy import export as e\ne._check_model(1)\n")
    assert _private_borrowings(source) == ["e._check_model"]
