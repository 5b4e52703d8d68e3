"""Names that moved in v0.3, kept working for one release with a DeprecationWarning.

v0.3 cut the flat package into subpackages by concern (docs/architecture.md). The old module paths
(`glonet_keras.trainer`, `glonet_keras.export`, ...) are served by an import hook that returns the
module at its new path, so `from glonet_keras import trainer` and `import glonet_keras.export` still
work and name the same module objects. `analysis.choose_depth` and `analysis.depth_table`, which
re-exported `glonet_keras.deploy`'s functions, are attached here, above both modules, because
`analysis` may not import `deploy` (deploy is built on analysis). All of these go in v0.4.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from glonet_keras import analysis, deploy

REMOVED_IN = "0.4"

# Old module path -> new module path.
MOVED_MODULES = {
    "glonet_keras.augment": "glonet_keras.data.augment",
    "glonet_keras.preprocessing": "glonet_keras.data.preprocessing",
    "glonet_keras.trainer": "glonet_keras.training.trainer",
    "glonet_keras.rundir": "glonet_keras.training.rundir",
    "glonet_keras.fastfit": "glonet_keras.training.fastfit",
    "glonet_keras.distribute": "glonet_keras.training.distribute",
    "glonet_keras.callbacks": "glonet_keras.training.callbacks",
    "glonet_keras.export": "glonet_keras.deploy.export",
    "glonet_keras.onnx_export": "glonet_keras.deploy.onnx_export",
    "glonet_keras.serving": "glonet_keras.deploy.serving",
}


def _warn(old, new):
    warnings.warn(f"{old} moved to {new}; the old name goes in glonet-keras {REMOVED_IN}.",
                  DeprecationWarning, stacklevel=3)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and returns the module at its new path (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        _warn(spec.name, MOVED_MODULES[spec.name])
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        """Nothing to run: the module at the new path is already imported."""


def install():
    """Adds the finder to `sys.meta_path` once."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())


def choose_depth(model, validation_data, tolerance=0.01, batch_size=256):
    """Deprecated: `glonet_keras.deploy.choose_depth`."""
    _warn("glonet_keras.analysis.choose_depth", "glonet_keras.deploy.choose_depth")
    return deploy.choose_depth(model, validation_data, tolerance=tolerance, batch_size=batch_size)


def depth_table(model, data, **kwargs):
    """Deprecated: `glonet_keras.deploy.depth_table`."""
    _warn("glonet_keras.analysis.depth_table", "glonet_keras.deploy.depth_table")
    return deploy.depth_table(model, data, **kwargs)


install()
analysis.choose_depth = choose_depth
analysis.depth_table = depth_table
