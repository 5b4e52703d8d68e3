"""Keras' own layer test (`keras.src.testing.TestCase.run_layer_test`) for every custom layer the
library registers: serialization, build, symbolic and eager calls, a compiled training step, and
mixed precision (float16 outputs whose dtype matches `compute_output_spec`, float32 weights)."""

import re
from pathlib import Path

import keras
import numpy as np
from keras import ops
from keras.src.testing import TestCase

import glonet_keras
from glonet_keras.data.augment import RandomErasing, RandomShiftFlip
from glonet_keras.layers import (
    ClassToken,
    DenseStack,
    GlobalAggregation,
    PositionEmbedding,
    TokenPooling,
)

TESTED = {"GlobalAggregation", "DenseStack", "ClassToken", "PositionEmbedding", "TokenPooling",
          "RandomShiftFlip", "RandomErasing", "RandomMix"}
# Registered classes that are not layers, or are models with their own harness (test_models).
NOT_LAYERS = {"TorchBiasUniform", "GloNetMLP", "PlainMLP", "ResNetMLP", "GloNetCNN", "PlainCNN",
              "ResNetCNN", "GloNetViT", "ViT", "SuperimposedGloNet",
              "MixingModel"}  # MixingModel: the trainer's training-only wrapper (test_augment).


class LayerContractTest(TestCase):
    def test_every_registered_layer_is_tested_here(self):
        package = Path(glonet_keras.__file__).parent
        registered = set()
        for path in package.rglob("*.py"):
            registered |= set(re.findall(
                r"register_keras_serializable\([^)]*\)\s*\nclass (\w+)", path.read_text()))
        self.assertEqual(registered - NOT_LAYERS, TESTED)

    def test_global_aggregation_of_a_list(self):
        for mode in ("sum", "mean"):
            self.run_layer_test(
                GlobalAggregation, {"mode": mode}, input_shape=((2, 3), (2, 3), (2, 3)), expected_output_shape=(2, 3),
                expected_num_trainable_weights=0, supports_masking=False,
            )
        self.run_layer_test(
            GlobalAggregation, {"cumulative": True}, input_shape=((2, 3), (2, 3)), expected_output_shape=(2, 2, 3),
        )

    def test_global_aggregation_of_a_stack(self):
        stacked = np.arange(24, dtype="float32").reshape(2, 4, 3)
        self.run_layer_test(
            GlobalAggregation, {"mode": "sum"}, input_data=stacked,
            expected_output=ops.convert_to_tensor(stacked.sum(axis=1)),
        )
        self.run_layer_test(
            GlobalAggregation, {"mode": "mean", "cumulative": True}, input_data=stacked,
            expected_output=ops.convert_to_tensor(
                np.cumsum(stacked, axis=1) / np.arange(1, 5, dtype="float32")[None, :, None]),
        )

    def test_dense_stack(self):
        for normalization, weights in ((None, 2), ("layer", 4)):
            self.run_layer_test(
                DenseStack, {"num_blocks": 3, "units": 4, "normalization": normalization},
                input_shape=(2, 4), expected_output_shape=(2, 3, 4),
                expected_num_trainable_weights=weights, expected_num_non_trainable_weights=0,
            )
        self.run_layer_test(
            DenseStack, {"num_blocks": 3, "units": 4}, input_shape=(2, 4),
            call_kwargs={"steps": 2}, expected_output_shape=(2, 2, 4),
        )

    def test_class_token(self):
        self.run_layer_test(
            ClassToken, {"initializer": "ones"}, input_data=np.zeros((2, 3, 4), "float32"),
            expected_output=ops.concatenate([ops.ones((2, 1, 4)), ops.zeros((2, 3, 4))], axis=1),
            expected_num_trainable_weights=1,
        )

    def test_position_embedding(self):
        self.run_layer_test(
            PositionEmbedding, {"initializer": "ones"},
            input_data=np.zeros((2, 3, 4), "float32"), expected_output=ops.ones((2, 3, 4)),
            expected_num_trainable_weights=1,
        )

    def test_token_pooling(self):
        tokens = np.arange(24, dtype="float32").reshape(2, 3, 4)
        self.run_layer_test(TokenPooling, {"mode": "cls"}, input_data=tokens,
                            expected_output=ops.convert_to_tensor(tokens[:, 0]))
        self.run_layer_test(TokenPooling, {"mode": "mean"}, input_data=tokens,
                            expected_output=ops.convert_to_tensor(tokens.mean(axis=1)))

    def assert_image_augmentation_contract(self, layer_class, training_config):
        """An image augmentation layer: the identity at inference, no weights, one seed generator;
        in training (`training_config`), images of the same shape."""
        images = np.arange(2 * 16 * 16 * 3, dtype="float32").reshape(2, 16, 16, 3)
        self.run_layer_test(  # Inference: the identity.
            layer_class, {"seed": 1}, input_data=images,
            expected_output=ops.convert_to_tensor(images),
            expected_num_trainable_weights=0, expected_num_seed_generators=1,
        )
        self.run_layer_test(
            layer_class, {"seed": 1, **training_config}, input_shape=(2, 16, 16, 3),
            call_kwargs={"training": True}, expected_output_shape=(2, 16, 16, 3),
            expected_num_seed_generators=1,
        )

    def test_random_shift_flip(self):
        self.assert_image_augmentation_contract(RandomShiftFlip, {"flip": True, "crop": True})

    def test_random_erasing(self):
        self.assert_image_augmentation_contract(RandomErasing, {"probability": 1.0})

    def test_random_mix(self):
        # RandomMix takes one dict {"images", "labels"}; run_layer_test would pass a dict as keyword
        # arguments, so the same contract is checked here by hand: config round trip, no weights,
        # one seed generator, identity at inference, symbolic shapes, and mixed labels that sum to 1.
        from glonet_keras.data.augment import RandomMix

        batch = {"images": np.arange(4 * 8 * 8 * 1, dtype="float32").reshape(4, 8, 8, 1),
                 "labels": np.eye(4, dtype="float32")}
        layer = RandomMix(mixup=True, cutmix=True, seed=1)
        clone = keras.layers.deserialize(keras.layers.serialize(layer))
        self.assertIsInstance(clone, RandomMix)
        self.assertEqual(clone.get_config(), layer.get_config())
        self.assertEqual((len(layer.weights), len(layer._seed_generators)), (0, 1))
        same = layer(batch, training=False)
        for key in batch:
            np.testing.assert_array_equal(ops.convert_to_numpy(same[key]), batch[key])
        symbolic = layer({"images": keras.KerasTensor((None, 8, 8, 1)),
                          "labels": keras.KerasTensor((None, 4))})
        self.assertEqual({key: tuple(value.shape) for key, value in symbolic.items()},
                         {"images": (None, 8, 8, 1), "labels": (None, 4)})
        mixed = layer(batch, training=True)
        self.assertEqual({key: tuple(value.shape) for key, value in mixed.items()},
                         {"images": (4, 8, 8, 1), "labels": (4, 4)})
        np.testing.assert_allclose(ops.convert_to_numpy(mixed["labels"]).sum(axis=1), 1.0,
                                   rtol=1e-6)
