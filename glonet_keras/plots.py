"""PNG plots of the GloNet analyses: the early-exit curve, contribution shares, the depth sweep.

matplotlib is an optional dependency (`pip install 'glonet-keras[plots]'`) imported only when a plot
is drawn. Figures are rendered with the Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and never disturbs a notebook's own backend.

Every function takes plain numbers (lists or numpy arrays, e.g. from `glonet_keras.analysis`), writes
one PNG to `path`, and returns `path`. A 2-D input (seeds x positions) is drawn as its mean with a
band of one standard deviation.
"""

import os

import numpy as np


def new_figure(figsize=(6.0, 4.0)):
    """A matplotlib Figure on the Agg canvas (no display), or an ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib: pip install 'glonet-keras[plots]'."
        ) from error
    figure = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Writes `figure` as a PNG at `path` (creating its folder); returns the path."""
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _mean_std(values, name):
    values = np.asarray(values, dtype="float64")
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D sequence or a 2-D (runs, positions) array, received "
            f"shape {values.shape}."
        )
    return values.mean(0), values.std(0), values.shape[0]


def _line_with_band(axes, x, values, name, **kwargs):
    mean, std, runs = _mean_std(values, name)
    if len(x) != len(mean):
        raise ValueError(f"`{name}` has {len(mean)} positions but {len(x)} x values were given.")
    (line,) = axes.plot(x, mean, **kwargs)
    if runs > 1:
        axes.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def plot_early_exit(accuracies, path, *, metric_name="test accuracy", title=None, reference=None):
    """Metric of every k-prefix vs k (`accuracies[k - 1]`, or runs x L); `reference` a dashed line."""
    figure = new_figure()
    axes = figure.add_subplot()
    mean, _, _ = _mean_std(accuracies, "accuracies")
    ks = np.arange(1, len(mean) + 1)
    _line_with_band(axes, ks, accuracies, "accuracies", marker="." if len(ks) <= 40 else None,
                    label="k-prefix, shared head")
    if reference is not None:
        axes.axhline(reference, color="gray", linestyle="--", label=f"full model ({reference:.3f})")
    axes.set_xlabel("blocks kept (k)")
    axes.set_ylabel(metric_name)
    axes.set_title(title or "Early exit: the first k blocks with the trained head", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return save_figure(figure, path)


def plot_contribution_shares(shares, path, *, title=None, include_stem=False):
    """Each block's share of the contribution norm vs block index.

    `shares`: one profile (1-D or runs x n) or a dict label -> profile (several curves, e.g. "at
    init" and "trained"). With `include_stem`, position 0 is the stem.
    """
    if not isinstance(shares, dict):
        shares = {"share": shares}
    if not shares:
        raise ValueError("`shares` is empty.")
    figure = new_figure()
    axes = figure.add_subplot()
    for label, profile in shares.items():
        mean, _, _ = _mean_std(profile, f"shares[{label!r}]")
        start = 0 if include_stem else 1
        index = np.arange(start, start + len(mean))
        _line_with_band(axes, index, profile, f"shares[{label!r}]", label=str(label),
                        marker="." if len(index) <= 40 else None)
    axes.set_xlabel("block index" + (" (0 = stem)" if include_stem else ""))
    axes.set_ylabel("share of the contribution norm")
    axes.set_title(title or "Per-block contribution to the logits", fontsize="medium")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_depth_sweep(results, path, *, metric_name="test accuracy", title=None, reference=None):
    """Metric vs depth, one curve per model: `results` maps model -> {depth: value or [per seed]}.

    `reference`, optionally, maps model -> {depth: value} drawn dashed (e.g. the paper's numbers).
    """
    if not results:
        raise ValueError("`results` is empty: nothing to plot.")
    figure = new_figure()
    axes = figure.add_subplot()
    colors = {}
    for label, by_depth in results.items():
        depths = sorted(by_depth)
        if not depths:
            continue
        runs = [np.atleast_1d(np.asarray(by_depth[d], dtype="float64")) for d in depths]
        mean = np.array([r.mean() for r in runs])
        std = np.array([r.std() for r in runs])
        (line,) = axes.plot(depths, mean, marker="o", label=str(label))
        colors[label] = line.get_color()
        if any(len(r) > 1 for r in runs):
            axes.fill_between(depths, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                              linewidth=0)
    for label, by_depth in (reference or {}).items():
        depths = sorted(by_depth)
        # A reference curve takes the colour of the measured curve of the same name.
        axes.plot(depths, [by_depth[d] for d in depths], linestyle="--", marker="x", alpha=0.6,
                  color=colors.get(label), label=f"{label} (paper)")
    axes.set_xscale("log")
    axes.set_xlabel("depth (blocks)")
    axes.set_ylabel(metric_name)
    axes.set_title(title or "Depth sweep", fontsize="medium")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def plot_deep_glonet(accuracies, shares, path, *, title=None):
    """Two panels for one deep GloNet: accuracy per k (left) and per-block shares (right).

    `accuracies` maps a label to a curve over k = 1..L (e.g. the early exits, and a linear probe of
    block k alone); `shares` maps a label to a profile over the blocks (e.g. tap and update shares,
    at initialisation and trained).
    """
    if not accuracies or not shares:
        raise ValueError("`accuracies` and `shares` must each hold at least one curve.")
    figure = new_figure(figsize=(11.0, 4.0))
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for axes, curves, ylabel in ((left, accuracies, "test accuracy"),
                                 (right, shares, "share of the norm")):
        for label, values in curves.items():
            mean, _, _ = _mean_std(values, f"{label!r}")
            index = np.arange(1, len(mean) + 1)
            _line_with_band(axes, index, values, f"{label!r}", label=str(label),
                            marker="." if len(index) <= 40 else None)
        axes.set_xlabel("k (first k blocks)" if axes is left else "block index")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title or "Deep GloNet", fontsize="medium")
    return save_figure(figure, path)
