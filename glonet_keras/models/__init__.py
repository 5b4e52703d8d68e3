"""Model builders: the GloNet families (MLP, CNN, ViT) and their baselines, and `glonetify`.

Each family module registers its classes, variants and published presets in the one registry
(`glonet_keras.presets.registry`) at its end. `MODEL_CLASSES` and `get_model_class` are that
registry's, for the trainer's `--model` names.
"""

from glonet_keras.models.cnn import GloNetCNN, PlainCNN, ResNetCNN
from glonet_keras.models.common import GloNetModelBase
from glonet_keras.models.mlp import GloNetMLP, PlainMLP, ResNetMLP
from glonet_keras.models.superimpose import glonetify, suggest_block_outputs
from glonet_keras.models.vit import GloNetViT, ViT
from glonet_keras.presets.registry import MODEL_CLASSES, get_model_class

__all__ = [
    "MODEL_CLASSES", "GloNetModelBase", "GloNetCNN", "GloNetMLP", "GloNetViT", "PlainCNN",
    "PlainMLP", "ResNetCNN", "ResNetMLP", "ViT", "get_model_class", "glonetify",
    "suggest_block_outputs",
]
