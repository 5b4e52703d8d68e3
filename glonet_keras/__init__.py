"""glonet-keras: Globally Connected Neural Networks (GloNets) for Keras 3.

A GloNet is a plain chain of blocks whose outputs are all summed (`GlobalAggregation`) before a
linear head, so every block gets the head's gradient through a path of length one.
"""

from glonet_keras.augment import RandomShiftFlip
from glonet_keras.layers import DenseStack, GlobalAggregation
from glonet_keras.models.cnn import GloNetCNN, PlainCNN, ResNetCNN
from glonet_keras.models.common import GloNetModelBase
from glonet_keras.models.mlp import GloNetMLP, PlainMLP, ResNetMLP, to_scanned, to_unrolled
from glonet_keras.models.superimpose import glonetify, suggest_block_outputs
from glonet_keras.models.vit import ViT, GloNetViT
from glonet_keras.presets import create_model, list_models
from glonet_keras.skeleton import is_glonet

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "list_models",
    "GlobalAggregation",
    "DenseStack",
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
