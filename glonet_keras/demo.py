"""The main job (`make demo`): train a GloNet on the offline digits and show what a GloNet gives.

Prints the test accuracy, each block's share of the aggregate (norm of its tap over the test set)
and of the logits (exact per-block contributions), and the accuracy of every first-k-blocks model
through the same head. Runs in a few minutes on 2 CPU cores; needs no download.

    python -m glonet_keras.demo [--num_blocks 24] [--epochs 20]
"""

import argparse
import time

import keras
import numpy as np

from glonet_keras import analysis
from glonet_keras.data import load_arrays
from glonet_keras.models import GloNetMLP


def tap_norm_shares(model, x):
    """Each tap's share of the summed tap norms over `x` (what each block puts into the sum)."""
    taps = analysis.taps_model(model).predict(x, verbose=0)
    norms = np.array([np.linalg.norm(np.asarray(t, "float32"), axis=-1).sum() for t in taps])
    return norms / norms.sum()


def report_blocks(model, x_test, y_test):
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
    parser.add_argument("--num_blocks", type=int, default=24)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.time()
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_arrays("digits", seed=args.seed)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 (offline)")
    model = GloNetMLP(
        num_blocks=args.num_blocks, width=args.width, num_classes=10, input_shape=(8, 8, 1)
    )
    print(f"{model.name}: {model.num_blocks} blocks, {model.count_params():,} parameters, no BN")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, validation_split=0.1, verbose=1)
    test = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"\ntest accuracy: {test['accuracy']:.4f}   (test loss {test['loss']:.4f})")
    report_blocks(model, x_test, y_test)
    print(f"\ndone in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
