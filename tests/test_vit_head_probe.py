"""training/vit_head_probe.py: its flags and the variants it compares (the probe itself is not run)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.harness import training_module

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO_ROOT, "training", "vit_head_probe.py")


@pytest.mark.parametrize("args, named", [
    (["--variants=glonet,warp_drive"], "warp_drive"),
    (["--train_examples=10"], "--train_examples"),
])
def test_bad_flags_are_usage_errors_before_any_data_is_read(args, named):
    result = subprocess.run([sys.executable, PROGRAM, *args], capture_output=True, text=True,
                            timeout=120, cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode != 0
    assert named in result.stderr


def test_every_variant_builds_and_the_zero_head_starts_at_uniform_logits():
    import keras

    probe = training_module("vit_head_probe")
    images = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype("float32")
    logits = {}
    for variant in probe.VARIANTS:
        keras.utils.set_random_seed(0)
        logits[variant] = keras.ops.convert_to_numpy(probe.build(variant)(images))
        assert logits[variant].shape == (4, 10), variant
        assert np.isfinite(logits[variant]).all(), variant
    assert not logits["glonet_zero_head"].any()
    # The same seed gives the same encoder and head; the mean aggregation divides the sum by 6.
    np.testing.assert_allclose(logits["glonet_mean"], logits["glonet"] / 6, rtol=1e-4, atol=1e-4)
