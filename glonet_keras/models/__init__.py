"""Model builders, and the registry of model names used by the training programs and the zoo."""

from glonet_keras.models.cnn import GloNetCNN, PlainCNN, ResNetCNN
from glonet_keras.models.common import GloNetModelBase
from glonet_keras.models.mlp import GloNetMLP, PlainMLP, ResNetMLP
from glonet_keras.models.vit import GloNetViT, ViT

MODEL_CLASSES = {
    "glonet_mlp": GloNetMLP,
    "resnet_mlp": ResNetMLP,
    "plain_mlp": PlainMLP,
    "glonet_cnn": GloNetCNN,
    "resnet_cnn": ResNetCNN,
    "plain_cnn": PlainCNN,
    "glonet_vit": GloNetViT,
    "vit": ViT,
}


def get_model_class(name):
    """The builder class for a snake_case model name (e.g. `"glonet_mlp"`) or a class name."""
    by_class_name = {cls.__name__: cls for cls in MODEL_CLASSES.values()}
    if name in MODEL_CLASSES:
        return MODEL_CLASSES[name]
    if name in by_class_name:
        return by_class_name[name]
    raise ValueError(f"Unknown model {name!r}. Available: {sorted(MODEL_CLASSES)}.")
