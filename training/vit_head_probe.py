"""Why the GloNet ViT learns slowly on Fashion-MNIST: a short probe of its head, against the ViT.

`GloNetViT` sums the class tokens of every block into a linear head, with no LayerNorm in between
(a norm there would break the exact per-block split of the logits). The residual stream is not
normalised, so at initialisation the He-initialised head reads a large vector and the first logits
are far from uniform. This trains, from the same seed and data, a few variants for a short budget
(the first `--train_examples` training images, `--epochs` epochs, AdamW 1e-3 with a warm-up epoch
and cosine decay, weight decay 0.05, batch 128, no augmentation) and prints, per variant, the loss
before training, and the train and validation accuracy after each epoch (validation: the last
5,000 training images, never trained on here; the test split is not touched):

- `glonet`: GloNetViT as published (He-initialised head);
- `glonet_zero_head`: the same with `head_initializer="zeros"` (logits start uniform);
- `glonet_zero_head_conv`: that, with the convolutional tokenizer (`tokenizer="conv"`);
- `glonet_mean`: `aggregation="mean"` (the sum divided by the number of blocks);
- `glonet_tap_norm`: a LayerNorm on each block's class token before the sum (keeps the split exact:
  block i contributes W . LN_i(x_i));
- `glonet_gap_taps`: each block's tokens averaged instead of its class token;
- `vit`: the standard ViT (LayerNorm on the last block's class token, then the head);
- `vit_conv`: the standard ViT with the convolutional tokenizer.

Every variant: 6 blocks, 96-d tokens, 4x4 patches, 4 heads, MLP width 192 (glonet_vit_fashion_mnist).
Single seed, short budget: a screen for what to try at full length, not a result.

    python training/vit_head_probe.py --variants=glonet,glonet_zero_head,vit
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
VARIANTS = ("glonet", "glonet_zero_head", "glonet_zero_head_conv", "glonet_mean", "glonet_tap_norm",
            "glonet_gap_taps", "vit", "vit_conv")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to train, from {list(VARIANTS)}.")
flags.DEFINE_integer("train_examples", 10000, "Train on the first N training images.")
flags.DEFINE_integer("epochs", 2, "Epochs per variant.")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("seed", 0, "Seed of every variant's initialisation and shuffling.")
ARGS = dict(num_blocks=6, hidden_dim=96, num_heads=4, mlp_dim=192, patch_size=4, input_shape=(28, 28, 1))
VALIDATION = 5000


def build(variant):
    import keras

    from glonet_keras.layers import TokenPooling
    from glonet_keras.models.vit import GloNetViT, ViT, _embed_and_encode

    tokenizer = "conv" if variant.endswith("_conv") else "patch"
    if variant.startswith("vit"):
        return ViT(tokenizer=tokenizer, **ARGS)
    if variant in ("glonet", "glonet_zero_head", "glonet_zero_head_conv", "glonet_mean"):
        return GloNetViT(aggregation="mean" if variant == "glonet_mean" else "sum",
                         head_initializer="zeros" if "zero_head" in variant else None,
                         tokenizer=tokenizer, **ARGS)
    encoder = {key: value for key, value in ARGS.items() if key != "input_shape"}
    inputs, _, blocks = _embed_and_encode(
        ARGS["input_shape"], **encoder, activation="gelu", initializer="he", dtype=None)
    if variant == "glonet_tap_norm":
        taps = [keras.layers.LayerNormalization(epsilon=1e-6)(TokenPooling("cls")(b)) for b in blocks]
    else:
        taps = [keras.layers.GlobalAveragePooling1D()(b) for b in blocks]
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Add()(taps)))


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"Unknown --variants {unknown}; choose from {list(VARIANTS)}.")
    if not 128 <= FLAGS.train_examples <= 60000 - VALIDATION:
        raise app.UsageError(f"--train_examples must be in [128, {60000 - VALIDATION}].")
    import keras
    import tensorflow as tf

    from glonet_keras.data import load_arrays

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    (images, labels), _ = load_arrays("fashion_mnist")
    images = (images.astype("float32") / 255.0 - 0.2860) / 0.3530  # the training set's statistics
    x_train, y_train = images[:FLAGS.train_examples], labels[:FLAGS.train_examples]
    x_val, y_val = images[-VALIDATION:], labels[-VALIDATION:]
    steps = FLAGS.train_examples // 128
    for variant in FLAGS.variants:
        keras.utils.set_random_seed(FLAGS.seed)
        model = build(variant)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, max(1, (FLAGS.epochs - 1) * steps), warmup_target=1e-3, warmup_steps=steps)
        model.compile(keras.optimizers.AdamW(schedule, weight_decay=0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        initial_loss = model.evaluate(x_val[:1000], y_val[:1000], verbose=0)[0]
        start = time.time()
        history = model.fit(x_train, y_train, batch_size=128, epochs=FLAGS.epochs,
                            validation_data=(x_val, y_val), verbose=0).history
        print(json.dumps(dict(
            variant=variant, initial_loss=round(initial_loss, 3),
            train_accuracy=[round(a, 4) for a in history["accuracy"]],
            validation_accuracy=[round(a, 4) for a in history["val_accuracy"]],
            seconds=round(time.time() - start),
        )), flush=True)


if __name__ == "__main__":
    app.run(main)
