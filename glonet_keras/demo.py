"""The main job (`make demo`): everything glonet-keras does, on offline data, in a few minutes on a CPU.

1. Train a GloNet MLP on an offline data set (digits by default; `--dataset fashion_mnist` for the
   real 28x28 benchmark once `make data` has installed it) through the library's training path
   (`glonet_keras.training.trainer.train`: MirroredStrategy over the available devices, Keras progress bars,
   checkpoints) and print its test accuracy.
2. Show what a GloNet gives: each block's share of the aggregate (norm of its tap) and of the
   logits (exact per-block contributions), and the accuracy of every first-k-blocks model through
   the same head, from one forward pass (`glonet_keras.analysis`).
3. Export a TF Serving SavedModel and answer one REST request from it (`glonet_keras.deploy.export`,
   `glonet_keras.deploy.serving`).
4. Load a pretrained GloNet of the same data set from the zoo in one line and evaluate it.

    python -m glonet_keras.demo [--dataset digits|fashion_mnist|mnist1d] [--num_blocks 24]
                                [--epochs 20] [--output_dir runs/demo]
"""

import argparse
import os
import time

import numpy as np

from glonet_keras import analysis, data, presets
from glonet_keras.deploy import serving
from glonet_keras.training.trainer import TrainConfig, train

# The zoo model shown in step 4, per data set.
PRETRAINED = {
    "digits": "glonet_cnn_digits",
    "mnist1d": "glonet_cnn_mnist1d",
    "fashion_mnist": "glonet_cnn_bn_fashion_mnist",
}


def tap_norm_shares(model, x):
    """Each tap's share of the summed tap norms over `x` (what each block puts into the sum)."""
    taps = analysis.taps_model(model).predict(x, verbose=0)
    norms = np.array([np.linalg.norm(np.asarray(t, "float32"), axis=-1).sum() for t in taps])
    return norms / norms.sum()


def report_blocks(model, x_test, y_test):
    """Prints the per-block table; returns the accuracy of every k-prefix."""
    tap_shares = tap_norm_shares(model, x_test)
    logit_shares = analysis.contribution_shares(model, x_test)
    exit_accuracy = analysis.early_exit_accuracy(model, x_test, y_test)
    print(f"\n{'block':>5}  {'share of sum':>12}  {'share of logits':>15}  {'accuracy of blocks 1..k':>23}")
    for k in range(model.num_blocks):
        print(f"{k + 1:>5}  {tap_shares[k]:>12.3f}  {logit_shares[k]:>15.3f}  {exit_accuracy[k]:>23.4f}")
    full = exit_accuracy[-1]
    within = int(np.argmax(exit_accuracy >= full - 0.005)) + 1
    print(
        f"\nThe first {within} of {model.num_blocks} blocks, through the same head and without "
        f"retraining, are within 0.5 points of the full model ({exit_accuracy[within - 1]:.4f} vs "
        f"{full:.4f})."
    )
    return exit_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PRETRAINED), default="digits")
    parser.add_argument("--num_blocks", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=os.path.join("runs", "demo"))
    args = parser.parse_args(argv)
    start = time.time()

    print(f"== 1. Train a GloNet MLP on {args.dataset} (offline, no download)")
    batch_size = 128 if args.dataset == "fashion_mnist" else 32
    result = train(
        TrainConfig(
            model="glonet_mlp", depth=args.num_blocks, width=args.width, dataset=args.dataset,
            epochs=args.epochs, batch_size=batch_size, learning_rate=1e-3, strategy="mirrored",
            seed=args.seed, model_dir=os.path.join(args.output_dir, "model"),
            export_dir=os.path.join(args.output_dir, "serving"), tensorboard=False,
            overwrite=True,  # `make demo` again replaces the previous demo run.
        )
    )
    model = result.model
    print(
        f"\n{model.name}: {model.num_blocks} blocks, {model.count_params():,} parameters, no BN; "
        f"{result.replicas} replica(s), {np.median(result.seconds_per_epoch):.2f} s per epoch"
    )
    print(f"test accuracy: {result.test_metrics['accuracy']:.4f}")

    print("\n== 2. Per block: share of the aggregate, share of the logits, early exits")
    x_test_raw, y_test = data.load_split(args.dataset, "test", seed=args.seed)
    x_test = np.asarray(result.info.preprocessing(x_test_raw))
    report_blocks(model, x_test, y_test)

    print(f"\n== 3. SavedModel for TF Serving: {result.export_path}")
    loaded = serving.load(result.export_path)
    request = {"instances": x_test_raw[:1].tolist()}
    (answer,) = serving.predict(loaded, request)["predictions"]
    keras_probabilities = _softmax(model.predict(x_test[:1], verbose=0)[0])
    print(
        f"REST request with one raw image -> class {int(np.argmax(answer['probabilities']))} "
        f"(p = {max(answer['probabilities']):.3f}; label {y_test[0]}); "
        f"max |SavedModel - Keras| = {np.abs(np.array(answer['probabilities']) - keras_probabilities).max():.1e}"
    )

    name = PRETRAINED[args.dataset]
    print(f"\n== 4. A pretrained GloNet from the zoo, in one line: create_model({name!r}, pretrained=True)")
    pretrained = presets.create_model(name, pretrained=True)
    accuracy = analysis.early_exit_accuracy(
        pretrained, np.asarray(pretrained.preprocessing(x_test_raw)), y_test)
    published = pretrained.preset_metadata["metrics"]["test_accuracy"]
    print(
        f"{name}: test accuracy {accuracy[-1]:.4f} (published {published:.4f}); "
        f"first k blocks: " + ", ".join(f"k={k + 1}: {a:.3f}" for k, a in enumerate(accuracy))
    )
    print(f"\ndone in {time.time() - start:.1f} s")


def _softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


if __name__ == "__main__":
    main()
