"""Early exits, exact per-block contributions and the plots, on every family the library builds.

Tolerances: float32 models must decompose to 1e-5 relative (max |error| / max |output|).
mixed_float16 models compute their taps and their own head in float16 (unit roundoff about 5e-4,
accumulated over the blocks and the head's dot products) while the decomposition is done in
float32, so they are held to 2e-2 relative.
"""

import numpy as np
import pytest

from glonet_keras import GloNetCNN, GloNetMLP, GloNetViT, ResNetMLP, analysis, plots

FLOAT32_RTOL = 1e-5
MIXED_RTOL = 2e-2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _build(family, include_stem=False, aggregation="sum", dtype=None):
    if family == "mlp":
        model = GloNetMLP(num_blocks=4, width=8, num_classes=3, input_shape=(6,),
                          include_stem=include_stem, aggregation=aggregation, dtype=dtype)
        x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    elif family == "cnn":
        model = GloNetCNN(depth=8, width=4, num_classes=3, input_shape=(8, 8, 1),
                          include_stem=include_stem, aggregation=aggregation, dtype=dtype)
        x = np.random.default_rng(0).uniform(size=(8, 8, 8, 1)).astype("float32")
    else:
        model = GloNetViT(num_blocks=2, hidden_dim=8, num_heads=2, mlp_dim=16, patch_size=4,
                          num_classes=3, input_shape=(8, 8, 3), include_stem=include_stem,
                          aggregation=aggregation, dtype=dtype)
        x = np.random.default_rng(0).uniform(size=(8, 8, 8, 3)).astype("float32")
    # A zero bias (He init) would hide a decomposition that forgets it: give the head a real one.
    head = model.get_layer("head")
    head.bias.assign(np.linspace(-1.0, 1.0, head.bias.shape[0]).astype("float32"))
    return model, x


def _relative_error(actual, expected):
    expected = np.asarray(expected, dtype="float64")
    return np.abs(np.asarray(actual, dtype="float64") - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("family", ["mlp", "cnn", "vit"])
@pytest.mark.parametrize("include_stem,aggregation", [(False, "sum"), (True, "mean")])
def test_contributions_sum_to_output_and_exits_match_truncate(family, include_stem, aggregation):
    model, x = _build(family, include_stem, aggregation)
    output = model.predict(x, verbose=0)
    contributions = analysis.block_contributions(model, x)
    extra = int(include_stem)
    assert contributions.shape == (len(x), model.num_blocks + extra, 3)
    assert contributions.dtype == np.float32
    reconstructed = contributions.sum(1) + analysis.head_bias(model)
    assert _relative_error(reconstructed, output) < FLOAT32_RTOL

    exits = analysis.early_exit_logits(model, x)
    assert exits.shape == (len(x), model.num_blocks, 3)
    for k in range(1, model.num_blocks + 1):
        truncated = analysis.truncate(model, k).predict(x, verbose=0)
        assert _relative_error(exits[:, k - 1], truncated) < FLOAT32_RTOL
    np.testing.assert_allclose(exits[:, -1], output, rtol=1e-5, atol=1e-6)


def test_prefix_of_contributions_is_the_truncated_model():
    # In sum mode, block contributions also explain every early exit: prefix sums + bias.
    model, x = _build("mlp")
    contributions = analysis.block_contributions(model, x)
    bias = analysis.head_bias(model)
    for k in (1, 3):
        truncated = analysis.truncate(model, k).predict(x, verbose=0)
        assert _relative_error(contributions[:, :k].sum(1) + bias, truncated) < FLOAT32_RTOL


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_mixed_float16_decomposes_within_half_precision(family):
    model, x = _build(family, dtype="mixed_float16")
    assert model.get_layer("head").compute_dtype == "float16"
    output = model.predict(x, verbose=0)
    contributions = analysis.block_contributions(model, x)
    assert contributions.dtype == np.float32
    assert _relative_error(contributions.sum(1) + analysis.head_bias(model), output) < MIXED_RTOL
    exits = analysis.early_exit_logits(model, x)
    truncated = analysis.truncate(model, 2).predict(x, verbose=0)
    assert _relative_error(exits[:, 1], truncated) < MIXED_RTOL


def test_contribution_shares_and_early_exit_accuracy():
    model, x = _build("mlp")
    shares = analysis.contribution_shares(model, x)
    assert shares.shape == (4,)
    np.testing.assert_allclose(shares.sum(), 1.0, rtol=1e-5)
    norms = np.linalg.norm(analysis.block_contributions(model, x), axis=-1).sum(0)
    np.testing.assert_allclose(shares, norms / norms.sum(), rtol=1e-5)

    y = np.arange(len(x)) % 3
    accuracies = analysis.early_exit_accuracy(model, x, y)
    assert accuracies.shape == (4,)
    for k in (1, 4):
        predictions = analysis.truncate(model, k).predict(x, verbose=0).argmax(-1)
        assert accuracies[k - 1] == pytest.approx((predictions == y).mean())
    one_hot = np.eye(3)[y]
    np.testing.assert_array_equal(analysis.early_exit_accuracy(model, x, one_hot), accuracies)
    with pytest.raises(ValueError, match="same number of examples"):
        analysis.early_exit_accuracy(model, x, y[:-1])
    # Labels of another rank were flattened: (16, 1, 3) became 48 labels, or worse, the right count.
    for wrong in (np.zeros((len(x), 1, 3), "int64"), np.zeros((len(x), 0), "int64")):
        with pytest.raises(ValueError, match="one-hot \\(batch, classes\\), received shape"):
            analysis.early_exit_accuracy(model, x, wrong)


def test_truncate_range_and_non_glonet_errors():
    model, _ = _build("mlp")
    for k in (0, 5, True, 2.0):
        with pytest.raises(ValueError, match=r"\[1, 4\]"):
            analysis.truncate(model, k)
    baseline = ResNetMLP(num_blocks=2, width=4, num_classes=3, input_shape=(6,))
    with pytest.raises(ValueError, match="glonet_aggregation"):
        analysis.block_contributions(baseline, np.zeros((2, 6), "float32"))
    with pytest.raises(analysis.NotAGloNetError, match="Expected a keras.Model"):
        analysis.contribution_shares("not a model", np.zeros((2, 6)))


def _assert_png(path):
    from matplotlib import image

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Something was drawn: not a blank canvas.
    assert pixels[..., :3].std() > 0.01


def test_plots_write_valid_pngs(tmp_path):
    model, x = _build("mlp")
    curve = analysis.early_exit_accuracy(model, x, np.arange(len(x)) % 3)
    shares = analysis.contribution_shares(model, x)
    paths = [
        plots.plot_early_exit(curve, tmp_path / "early_exit.png", reference=float(curve[-1])),
        plots.plot_early_exit(np.stack([curve, curve * 0.9]), tmp_path / "runs" / "band.png"),
        plots.plot_contribution_shares({"init": shares, "trained": [shares, shares[::-1]]},
                                       tmp_path / "shares.png"),
        plots.plot_depth_sweep({"GloNet": {5: [0.9, 0.92], 20: [0.91, 0.93]}, "Plain": {5: 0.9, 20: 0.5}},
                               tmp_path / "sweep.png", reference={"Plain": {5: 0.95, 200: 0.11}}),
    ]
    for path in paths:
        _assert_png(path)
    with pytest.raises(ValueError, match="empty"):
        plots.plot_depth_sweep({}, tmp_path / "nothing.png")
    with pytest.raises(ValueError, match="accuracies"):
        plots.plot_early_exit([], tmp_path / "nothing.png")


@pytest.mark.parametrize("include_stem", [False, True])
def test_block_updates_add_up_to_the_taps_and_the_logits(include_stem):
    """In a residual stream each tap holds the earlier updates; the updates recover taps and logits."""
    model, x = _build("vit", include_stem=include_stem)
    contributions = analysis.block_contributions(model, x)
    updates = analysis.block_updates(model, x)
    num_blocks = model.num_blocks
    assert updates.shape == (len(x), num_blocks, 3)
    blocks = contributions[:, 1:] if include_stem else contributions
    stem = contributions[:, :1] if include_stem else 0.0
    np.testing.assert_allclose(np.cumsum(updates, axis=1) + stem, blocks, rtol=1e-5, atol=1e-5)
    weights = (num_blocks - np.arange(num_blocks))[None, :, None]  # block i counts L - i + 1 times
    logits = (weights * updates).sum(1) + analysis.head_bias(model)
    if include_stem:
        logits = logits + (num_blocks + 1) * contributions[:, 0]  # the stem's tap, and in every t_i
    output = model.predict(x, verbose=0)
    assert _relative_error(logits, output) < FLOAT32_RTOL
    shares = analysis.update_shares(model, x)
    np.testing.assert_allclose(shares.sum(), 1.0, rtol=1e-5)
