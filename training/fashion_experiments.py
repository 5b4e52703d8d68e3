"""The Fashion-MNIST experiments of training/reproduce.py: the paper's claims at its depths, on real data.

- `fashion_mlp_sweep`: MLPs of 5..200 blocks (the paper's range), GloNet vs the plain chain, the
  BN-free ResNet and ResNet-v2 (BN), in the authors' MNIST setting, on all 54,000 training images.
- `fashion_cnn_sweep`: CNNs at depths 20, 56 and 110 (CIFAR layouts), the same four families, on a
  fixed training subset with a short budget (a 2-core CPU cannot do more).
- `fashion_deep`: early exit and self-regulation of a deep CNN GloNet (110, CIFAR layout), the
  isotropic CNN GloNet of the same depth, and a 12-block ViT GloNet: the accuracy of every prefix,
  each block's share of the logits (tap norm, and for a residual stream what the block adds), and,
  for the CNNs, how much a linear probe can read from each block (is the information there, and
  does the shared head use it?).

Every runner returns a JSON-able dict; `*_section` functions turn those into the report's Markdown
(and findings), `write_figures` into PNGs. Test accuracy is always measured on the 10,000 official
test images, never used for any choice.
"""

import os

import numpy as np

from experiment_common import (
    BATCH_SIZE, SeededTrainer, accuracy, effective_depth, fmt, log, table, verdict,
)

EXPERIMENTS = ("fashion_mlp_sweep", "fashion_cnn_sweep", "fashion_deep")

BUDGETS = {
    "full": dict(
        mlp_depths=(5, 10, 20, 40, 60, 80, 100, 200), mlp_epochs=3, mlp_train_examples=None,
        cnn_depths=(20, 56, 110), cnn_epochs=3, cnn_train_examples=5_000, cnn_seeds=1,
        deep_depth=110, deep_epochs=5, deep_train_examples=10_000, vit_blocks=12,
        probe_examples=5_000,
    ),
    "quick": dict(
        mlp_depths=(5, 40), mlp_epochs=1, mlp_train_examples=10_000,
        cnn_depths=(20,), cnn_epochs=1, cnn_train_examples=2_000, cnn_seeds=1,
        deep_depth=20, deep_epochs=1, deep_train_examples=2_000, vit_blocks=4, probe_examples=1_000,
    ),
    "smoke": dict(
        mlp_depths=(2, 3), mlp_epochs=1, mlp_train_examples=256,
        cnn_depths=(8,), cnn_epochs=1, cnn_train_examples=128, cnn_seeds=1,
        deep_depth=8, deep_epochs=1, deep_train_examples=128, vit_blocks=2, probe_examples=128,
    ),
}
# The paper's MLP depth-sweep setting (its MNIST notebook), as in the digits sweep.
MLP_SETTING = dict(width=32, activation="leaky_relu", initializer="torch")
FAMILIES = {
    # label: (model name, extra constructor args); the same labels for MLPs and CNNs
    "GloNet": ("glonet", {}),
    "Plain": ("plain", {}),
    "ResNet (no BN)": ("resnet", {"normalization": None}),
    "ResNet-v2 (BN)": ("resnet", {"normalization": "batch"}),
}
TEST_EXAMPLES = {"full": None, "quick": 2_000, "smoke": 256}


def fashion_arrays(train_examples=None, test_examples=None, flat=False):
    """Preprocessed Fashion-MNIST: ((x_train, y_train), (x_test, y_test)), float32 / int32.

    Train = the first `train_examples` of the (seeded, shuffled) 54,000-image training split: a
    fixed subset; test = the official test images (the first `test_examples` in quick runs).
    """
    from glonet_keras import data

    info = data.dataset_info("fashion_mnist")
    x_train, y_train = data.load_split("fashion_mnist", "train", max_examples=train_examples)
    x_test, y_test = data.load_split("fashion_mnist", "test", max_examples=test_examples)
    x_train, x_test = info.preprocessing(x_train), info.preprocessing(x_test)
    if flat:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return (np.asarray(x_train), np.asarray(y_train, "int32")), (np.asarray(x_test),
                                                                 np.asarray(y_test, "int32"))


def _builder(family, kind):
    from glonet_keras.models import get_model_class

    name, extra = FAMILIES[family]
    return get_model_class(f"{name}_{kind}"), extra


def _glonet_record(model, x_test, y_test):
    """Prefix accuracies and shares of a trained GloNet (and the full model's accuracy)."""
    from glonet_keras import analysis

    return dict(
        accuracy=accuracy(model, x_test, y_test),
        early_exit=analysis.early_exit_accuracy(model, x_test, y_test).tolist(),
        shares=analysis.contribution_shares(model, x_test[:2000]).tolist(),
        update_shares=analysis.update_shares(model, x_test[:2000]).tolist(),
    )


# ---------------------------------------------------------------------------------------------
# Runners.


def run_mlp_sweep(budget, seeds, mode):
    import keras

    (x_train, y_train), (x_test, y_test) = fashion_arrays(
        budget["mlp_train_examples"], TEST_EXAMPLES[mode], flat=True)
    results = {label: {} for label in FAMILIES}
    glonet_exits = {}
    for depth in budget["mlp_depths"]:
        for label in FAMILIES:
            keras.backend.clear_session()
            builder, extra = _builder(label, "mlp")
            trainer = SeededTrainer(
                lambda: builder(num_blocks=depth, num_classes=10, input_shape=(784,),
                                **MLP_SETTING, **extra),
                epochs=budget["mlp_epochs"],
            )
            scores, exits = [], []
            for seed in seeds:
                model = trainer.initialise(seed)
                trainer.fit(x_train, y_train, seed)
                scores.append(accuracy(model, x_test, y_test))
                if label == "GloNet":
                    from glonet_keras import analysis

                    exits.append(analysis.early_exit_accuracy(model, x_test, y_test).tolist())
            results[label][str(depth)] = scores
            if exits:
                glonet_exits[str(depth)] = exits
            log(f"Fashion-MNIST MLP depth {depth:3d} {label:15s}: {fmt(scores)} %")
    return dict(mlp=results, glonet_early_exit=glonet_exits, train_examples=len(x_train),
                epochs=budget["mlp_epochs"])


def run_cnn_sweep(budget, seeds, mode):
    import keras

    seeds = seeds[: budget["cnn_seeds"]]
    (x_train, y_train), (x_test, y_test) = fashion_arrays(
        budget["cnn_train_examples"], TEST_EXAMPLES[mode])
    results = {label: {} for label in FAMILIES}
    glonet = {}
    for depth in budget["cnn_depths"]:
        for label in FAMILIES:
            keras.backend.clear_session()
            builder, extra = _builder(label, "cnn")
            trainer = SeededTrainer(
                lambda: builder(depth=depth, num_classes=10, input_shape=(28, 28, 1), **extra),
                epochs=budget["cnn_epochs"],
            )
            scores = []
            for seed in seeds:
                model = trainer.initialise(seed)
                trainer.fit(x_train, y_train, seed)
                scores.append(accuracy(model, x_test, y_test))
                if label == "GloNet":
                    glonet.setdefault(str(depth), []).append(_glonet_record(model, x_test, y_test))
            results[label][str(depth)] = scores
            log(f"Fashion-MNIST CNN depth {depth:3d} {label:15s}: {fmt(scores)} %")
    return dict(cnn=results, glonet=glonet, train_examples=len(x_train),
                epochs=budget["cnn_epochs"], seeds_used=seeds)


def deep_models(budget):
    """The deep GloNets whose early exits and shares the report examines: name -> builder."""
    from glonet_keras import GloNetCNN, GloNetViT

    depth = budget["deep_depth"]
    blocks = (depth - 2) // 2
    return {
        f"GloNet CNN-{depth} (CIFAR layout)": lambda: GloNetCNN(
            depth=depth, num_classes=10, input_shape=(28, 28, 1)),
        f"GloNet CNN-{depth} (isotropic, {blocks} blocks of 32 channels)": lambda: GloNetCNN(
            layout="isotropic", depth=depth, width=32, num_classes=10, input_shape=(28, 28, 1)),
        f"GloNet ViT-{budget['vit_blocks']}": lambda: GloNetViT(
            num_blocks=budget["vit_blocks"], hidden_dim=64, num_heads=4, mlp_dim=128, patch_size=4,
            num_classes=10, input_shape=(28, 28, 1)),
    }


def run_deep(budget, seeds, mode):
    import keras

    from glonet_keras import analysis

    seed = seeds[0]
    (x_train, y_train), (x_test, y_test) = fashion_arrays(
        budget["deep_train_examples"], TEST_EXAMPLES[mode])
    out = {}
    for name, build in deep_models(budget).items():
        keras.backend.clear_session()
        trainer = SeededTrainer(build, epochs=budget["deep_epochs"])
        model = trainer.initialise(seed)
        init = dict(shares=analysis.contribution_shares(model, x_test[:2000]).tolist(),
                    update_shares=analysis.update_shares(model, x_test[:2000]).tolist())
        trainer.fit(x_train, y_train, seed)
        record = _glonet_record(model, x_test, y_test)
        record.update(init_shares=init["shares"], init_update_shares=init["update_shares"],
                      num_blocks=int(model.num_blocks), parameters=int(model.count_params()))
        if "CNN" in name:
            record["probe_accuracy"] = linear_probes(
                model, x_train[: budget["probe_examples"]], y_train[: budget["probe_examples"]],
                x_test, y_test)
        out[name] = record
        log(f"Fashion-MNIST deep {name}: {record['accuracy'] * 100:.1f} %")
    return dict(models=out, train_examples=len(x_train), epochs=budget["deep_epochs"], seed=seed)


def linear_probes(model, x_train, y_train, x_test, y_test):
    """Test accuracy of a logistic regression on each block's pooled output (before projection).

    What a linear read-out of block i COULD reach on its own: an upper bound for what the shared
    head gets from the first blocks, so a gap between probe and early exit is the head's, not the
    block's.
    """
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from glonet_keras import skeleton

    parts = skeleton.skeleton(model)
    pooled = [keras.layers.GlobalAveragePooling2D()(x) for x in parts.block_outputs.values()]
    features = keras.Model(parts.inputs, pooled)
    train = features.predict(x_train, batch_size=256, verbose=0)
    test = features.predict(x_test, batch_size=256, verbose=0)
    scores = []
    for f_train, f_test in zip(train, test):
        scaler = StandardScaler().fit(f_train)
        probe = LogisticRegression(max_iter=300).fit(scaler.transform(f_train), y_train)
        scores.append(float(probe.score(scaler.transform(f_test), y_test)))
    return scores


RUNNERS = {
    "fashion_mlp_sweep": run_mlp_sweep,
    "fashion_cnn_sweep": run_cnn_sweep,
    "fashion_deep": run_deep,
}


# ---------------------------------------------------------------------------------------------
# Report.


def _sweep_table(results, depths, label_depth=str):
    rows = [[label] + [fmt(by_depth[str(d)]) if str(d) in by_depth else "-" for d in depths]
            for label, by_depth in results.items()]
    return table(["model"] + [label_depth(d) for d in depths], rows)


def _subset_text(count):
    if count >= 54_000:
        return "All 54,000 training images (the other 6,000 are the validation split, unused)"
    return f"A fixed subset of {count:,} training images"


def _mean(values):
    return float(np.mean(values))


def mlp_sweep_section(result, findings):
    mlp = result["mlp"]
    depths = sorted({int(d) for by_depth in mlp.values() for d in by_depth})
    lines = [
        "## 6. Fashion-MNIST: MLP depth sweep (the paper's depths)", "",
        f"{_subset_text(result['train_examples'])} (flattened 784 pixels), the 10,000 test images, "
        "width 32, LeakyReLU(0.2), "
        "PyTorch-default initialisation, Adam 1e-3, batch 128, "
        f"{result['epochs']} epochs; test accuracy in %, mean ± population std over "
        f"{len(result['seeds'])} seeds. Depth = blocks between the stem and the head.", "",
        _sweep_table(mlp, depths), "",
        "![Fashion-MNIST MLP depth sweep](figures/fashion_depth_sweep_mlp.png)", "",
    ]
    glonet = {d: _mean(mlp["GloNet"][str(d)]) for d in depths}
    lo, hi = depths[0], depths[-1]
    spread = max(glonet.values()) - min(glonet.values())
    # Per seed: the largest minus the smallest accuracy over the depths, in points.
    per_seed = 100 * np.asarray([mlp["GloNet"][str(d)] for d in depths])
    judged = verdict([("held", per_seed.max(0) - per_seed.min(0), 2.0),
                      ("mostly held", per_seed.max(0) - per_seed.min(0), 5.0)])
    parts = []
    for label in ("Plain", "ResNet (no BN)", "ResNet-v2 (BN)"):
        acc_hi = _mean(mlp[label][str(hi)])
        worst = min(depths, key=lambda d: _mean(mlp[label][str(d)]))
        parts.append(f"{label} {_mean(mlp[label][str(lo)]) * 100:.1f} % at {lo} blocks, "
                     f"{acc_hi * 100:.1f} % at {hi} (lowest {_mean(mlp[label][str(worst)]) * 100:.1f}"
                     f" % at {worst})")
    findings.append(
        f"**Fashion-MNIST MLP depth resilience ({judged})**: the GloNet MLP stays within "
        f"{spread * 100:.1f} points from {lo} to {hi} blocks ({glonet[lo] * 100:.1f} -> "
        f"{glonet[hi] * 100:.1f} %); " + "; ".join(parts) + ". Held = all depths within 2 points.")
    return lines


# Below this test accuracy a 10-class model counts as collapsed (chance is 10 %).
CHANCE_MARGIN = 0.2


def cnn_sweep_section(result, findings):
    cnn = result["cnn"]
    depths = sorted({int(d) for by_depth in cnn.values() for d in by_depth})
    seeds = result.get("seeds_used", result["seeds"])
    lines = [
        "## 7. Fashion-MNIST: CNN depth sweep (20, 56, 110)", "",
        f"CIFAR layout (depth 6n + 2; 16/32/64 channels), 28x28x1 inputs, He init, ReLU, Adam 1e-3, "
        f"batch {BATCH_SIZE}, no augmentation; a fixed subset of {result['train_examples']:,} "
        f"training images (the first of the seeded training split) and {result['epochs']} epochs: "
        "the short budget a 2-core CPU allows, so absolute accuracies are below what these models "
        f"reach with full training; {len(seeds)} seed(s). Test accuracy on the 10,000 test images, %:",
        "", _sweep_table(cnn, depths, lambda d: f"depth {d}"), "",
        "![Fashion-MNIST CNN depth sweep](figures/fashion_depth_sweep_cnn.png)", "",
    ]
    described = []
    for label, by_depth in cnn.items():
        values = [_mean(by_depth[str(d)]) * 100 for d in depths]
        described.append(f"{label} " + " / ".join(f"{v:.1f}" for v in values))
    lo, hi = str(depths[0]), str(depths[-1])
    glonet_drop = (_mean(cnn["GloNet"][lo]) - _mean(cnn["GloNet"][hi])) * 100
    plain_drop = (_mean(cnn["Plain"][lo]) - _mean(cnn["Plain"][hi])) * 100
    collapsed = [label for label in ("Plain", "ResNet (no BN)")
                 if label in cnn and _mean(cnn[label][hi]) < CHANCE_MARGIN]
    # The rule is the 2-point rule of every depth sweep here; that the BN-free baselines collapse
    # where GloNet still trains is reported beside it, not folded into a softer verdict.
    drops = 100 * (np.asarray(cnn["GloNet"][lo]) - np.asarray(cnn["GloNet"][hi]))
    judged = verdict([("held", np.abs(drops), 2.0)])
    if "ResNet-v2 (BN)" in cnn:
        steps = -(-result["train_examples"] // BATCH_SIZE) * result["epochs"]
        lines += [
            f"The ResNet-v2 (BN) row does not measure depth: {steps} training steps leave Keras' "
            f"batch-norm moving statistics (momentum 0.99) with {0.99 ** steps * 100:.0f} % of their "
            "initial values, and the test-time normalisation uses them. It needs a longer budget "
            "(as the digits sweep found) before it can be compared.", ""]
    findings.append(
        f"**Fashion-MNIST CNN depth resilience ({judged})** (depths "
        f"{', '.join(map(str, depths))}, %): " + "; ".join(described)
        + f". From depth {lo} to {hi} GloNet changes by {-glonet_drop:+.1f} points and the plain "
        f"chain by {-plain_drop:+.1f}"
        + (f"; at depth {hi} {' and '.join(collapsed)} are at chance while GloNet still trains"
           if collapsed else "")
        + ". Held = GloNet within 2 points from the shallowest to the deepest (short budget on a "
        "subset: see the table; section 11 re-measures it with 20,000 images, 10 epochs and 3 "
        "seeds).")
    return lines


def _blocks_within(curve, full, points):
    within = np.nonzero(np.asarray(curve) >= full - points / 100)[0]
    return int(within[0]) + 1 if len(within) else len(curve)


def deep_section(result, findings):
    lines = [
        "## 8. Fashion-MNIST: early exit and self-regulation of deep CNN and ViT GloNets", "",
        f"Each model trained once (seed {result['seed']}) on the same {result['train_examples']:,}-image "
        f"subset for {result['epochs']} epochs (Adam 1e-3, batch {BATCH_SIZE}). Early exit = the first "
        "k blocks with the shared head. Two shares per block: the **tap share** (norm of W·tap_i, "
        "`contribution_shares`) and the **update share** (norm of W·(tap_i − tap_{i−1}), "
        "`update_shares`): in a residual stream (the ViT) tap i holds every earlier block's update, "
        "so the tap share grows with depth by construction and the update share is what block i "
        "itself adds; in the skip-free CNNs the tap share is the block's own contribution. Effective "
        "depth = fewest leading blocks carrying 90 % of a share. For the CNNs a **linear probe** "
        "(logistic regression on each block's pooled output, before the projection) shows what a "
        "linear read-out of that block alone reaches.", "",
    ]
    rows = []
    for name, record in result["models"].items():
        full = record["accuracy"]
        curve = record["early_exit"]
        n = record["num_blocks"]
        half = n // 2
        k1, k2 = _blocks_within(curve, full, 1), _blocks_within(curve, full, 2)
        shares, init_shares = np.asarray(record["shares"]), np.asarray(record["init_shares"])
        updates = np.asarray(record["update_shares"])
        rows.append([
            name, f"{record['parameters']:,}", f"{full * 100:.1f}", f"{k1} / {n}", f"{k2} / {n}",
            f"{init_shares[half:].sum() * 100:.0f} % -> {shares[half:].sum() * 100:.0f} %",
            f"{np.asarray(record['init_update_shares'])[half:].sum() * 100:.0f} % -> "
            f"{updates[half:].sum() * 100:.0f} %",
            f"{effective_depth(shares)} / {effective_depth(updates)}",
        ])
        probe = record.get("probe_accuracy")
        probe_text = ""
        if probe:
            probe_text = (f" A linear probe reads {probe[0] * 100:.0f} % from block 1, "
                          f"{probe[half - 1] * 100:.0f} % from block {half} and "
                          f"{probe[-1] * 100:.0f} % from block {n}, while the shared head's exits "
                          f"give {curve[0] * 100:.0f} %, {curve[half - 1] * 100:.0f} % and "
                          f"{curve[-1] * 100:.0f} %.")
        early = verdict([("held", [k2 / n], 0.5)], label_seeds=False)
        regulated = verdict([("held", [shares[half:].sum() / init_shares[half:].sum()], 0.9)],
                            label_seeds=False)
        findings.append(
            f"**{name}: early exit {early}, self-regulation {regulated} (1 seed)**: "
            f"{full * 100:.1f} % with all {n} blocks; "
            f"the first {k1} blocks come within 1 point and {k2} within 2. The deeper half's tap "
            f"share goes from {init_shares[half:].sum() * 100:.0f} % at initialisation to "
            f"{shares[half:].sum() * 100:.0f} % after training (update share "
            f"{updates[half:].sum() * 100:.0f} %).{probe_text} Early exit held = within 2 points "
            "with at most half the blocks; self-regulation held = the deeper half's tap share falls "
            "by at least 10 % (relative) in training. A short budget "
            f"({result['train_examples']:,} images, {result['epochs']} epochs); section 11 "
            "re-measures the CIFAR-layout CNN at "
            "depth 110 and the ViT at 6, 12 and 24 blocks with 20,000 images, 10 epochs and 3 "
            "seeds.")
    lines += [table(["model", "parameters", "accuracy %", "k within 1 pt", "k within 2 pt",
                     "deeper half, tap share (init -> trained)", "deeper half, update share",
                     "effective depth (tap / update)"], rows), ""]
    lines += [f"- {text}" for text in _diagnoses(result["models"])] + [""]
    lines += [f"![{name}](figures/{_figure_name(name)}.png)" for name in result["models"]] + [""]
    return lines


def _diagnoses(models, dead_below=0.2, gap_points=20):
    """Why a CNN does or does not exit early, read off its probe and exit curves."""
    texts = []
    for name, record in models.items():
        probe, curve = record.get("probe_accuracy"), record["early_exit"]
        if not probe:
            continue
        dead = [i + 1 for i, accuracy in enumerate(probe) if accuracy < dead_below]
        parts = []
        if dead:
            parts.append(
                f"{len(dead)} of its {len(probe)} blocks (the first from block {dead[0]}) are dead to "
                f"a linear read-out (probe below {dead_below * 100:.0f} %): they add taps that carry "
                "no class information, so depth buys nothing there, though the sum keeps the model "
                "trainable")
        gaps = [k + 1 for k in range(len(probe)) if probe[k] - curve[k] > gap_points / 100]
        if gaps:
            parts.append(
                f"at {len(gaps)} depths k (first k = {gaps[0]}) block k alone holds more than "
                f"{gap_points} points more for a linear read-out than the shared head reads from the "
                "first k blocks: the information is there, but the head (and the per-stage "
                "projection, where there is one) is fitted to the full sum, so a prefix misses "
                "the scale and direction the later taps add")
        if parts:
            texts.append(f"**Why, {name}**: " + "; ".join(parts) + ".")
    return texts


def _figure_name(name):
    return "fashion_deep_" + "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def write_figures(figures, results):
    from glonet_keras import plots

    def by_depth(nested):
        return {label: {int(d): v for d, v in values.items()} for label, values in nested.items()}

    if "fashion_mlp_sweep" in results:
        plots.plot_depth_sweep(by_depth(results["fashion_mlp_sweep"]["mlp"]),
                               os.path.join(figures, "fashion_depth_sweep_mlp.png"),
                               title="MLPs on Fashion-MNIST (width 32, the paper's setting)")
    if "fashion_cnn_sweep" in results:
        plots.plot_depth_sweep(by_depth(results["fashion_cnn_sweep"]["cnn"]),
                               os.path.join(figures, "fashion_depth_sweep_cnn.png"),
                               title="CNNs on Fashion-MNIST (subset, short budget)")
    for name, record in results.get("fashion_deep", {}).get("models", {}).items():
        curves = {"early exit accuracy": record["early_exit"]}
        if record.get("probe_accuracy"):
            curves["linear probe of block k alone"] = record["probe_accuracy"]
        plots.plot_deep_glonet(
            curves,
            {"tap share (trained)": record["shares"], "tap share (init)": record["init_shares"],
             "update share (trained)": record["update_shares"]},
            os.path.join(figures, _figure_name(name) + ".png"), title=f"{name}, Fashion-MNIST",
        )


SECTIONS = [
    ("fashion_mlp_sweep", mlp_sweep_section),
    ("fashion_cnn_sweep", cnn_sweep_section),
    ("fashion_deep", deep_section),
]
