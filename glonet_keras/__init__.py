"""glonet-keras: Globally Connected Neural Networks (GloNets) for Keras 3.

A GloNet is a plain chain of blocks whose outputs are all summed (`GlobalAggregation`) before a
linear head, so every block gets the head's gradient through a path of length one.

Subpackages, in the order data flows (docs/architecture.md): `data` (sources, preprocessing,
augmentation), `presets` (the registry, fetch, load/save), `models` (the families, glonetify),
`analysis` (truncate, exits, contributions), `deploy` (depth choice, anytime, SavedModel, ONNX,
REST), `training` (the trainer and its run directory), `cli` (the programs).
"""

from glonet_keras.data.augment import RandomErasing, RandomShiftFlip
from glonet_keras.layers import DenseStack, GlobalAggregation
from glonet_keras.models.cnn import GloNetCNN, PlainCNN, ResNetCNN
from glonet_keras.models.common import GloNetModelBase
from glonet_keras.models.mlp import GloNetMLP, PlainMLP, ResNetMLP, to_scanned, to_unrolled
from glonet_keras.models.superimpose import glonetify, suggest_block_outputs
from glonet_keras.models.vit import ViT, GloNetViT
from glonet_keras.presets import create_model, list_models
from glonet_keras.skeleton import is_glonet
from glonet_keras.version import __version__
from glonet_keras import _deprecated  # noqa: F401  (v0.2 module paths, for one release)

__all__ = [
    "create_model",
    "list_models",
    "GlobalAggregation",
    "DenseStack",
    "RandomErasing",
    "RandomShiftFlip",
    "is_glonet",
    "GloNetModelBase",
    "GloNetMLP",
    "ResNetMLP",
    "PlainMLP",
    "GloNetCNN",
    "ResNetCNN",
    "PlainCNN",
    "GloNetViT",
    "ViT",
    "glonetify",
    "suggest_block_outputs",
    "to_scanned",
    "to_unrolled",
]
