"""Pieces every experiment of training/reproduce.py shares: logging, seeded training, formatting.

A module of its own so that the experiment modules (reproduce.py, fashion_experiments.py) import it
without importing each other (reproduce.py is the absl program and defines the flags).
"""

import time

BATCH_SIZE = 128  # the authors' MLP notebook
LEARNING_RATE = 1e-3


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Training: one compiled model per configuration, re-initialised for every seed. On 2 CPU cores,
# tracing a deep model's training step costs more than training it (about 0.5 s per ResNet-v2
# block), so the traced step is reused across seeds: each seed gets the freshly initialised weights
# of its own newly built model and a zeroed optimizer state.
# ---------------------------------------------------------------------------------------------


class SeededTrainer:
    def __init__(self, build, *, epochs, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE):
        self.build = build
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.model = None

    def initialise(self, seed):
        """The model carrying seed `seed`'s initial weights, compiled, optimizer state zeroed."""
        import keras

        keras.utils.set_random_seed(seed)
        fresh = self.build()
        if self.model is None:
            self.model = fresh
            self.model.compile(
                optimizer=keras.optimizers.Adam(self.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        else:
            self.model.set_weights(fresh.get_weights())
            for variable in self.model.optimizer.variables:
                if not variable.path.endswith("learning_rate"):
                    variable.assign(keras.ops.zeros_like(variable))
        return self.model

    def fit(self, x, y, seed):
        import keras
        import numpy as np

        keras.utils.set_random_seed(seed)
        history = self.model.fit(x, y, batch_size=self.batch_size, epochs=self.epochs, verbose=0,
                                 shuffle=True)
        return bool(np.isfinite(history.history["loss"][-1]))

    def test_accuracies(self, seeds, x_train, y_train, x_test, y_test):
        """Trains once per seed from that seed's initial weights: (test accuracies, diverged runs)."""
        scores, diverged = [], 0
        for seed in seeds:
            model = self.initialise(seed)
            diverged += not self.fit(x_train, y_train, seed)
            scores.append(accuracy(model, x_test, y_test))
        return scores, diverged


def accuracy(model, x, y):
    import numpy as np

    logits = model.predict(x, batch_size=512, verbose=0)
    return float((np.asarray(logits).argmax(-1) == y).mean())


def mean_std(values):
    import numpy as np

    values = np.asarray(values, dtype="float64")
    return float(values.mean()), float(values.std())


def fmt(values, scale=100.0, digits=1):
    """'mean ± std' over seeds; a single run says "(1 seed)", never "± 0.0"."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean * scale:.{digits}f} (1 seed)"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def verdict(rules, otherwise="did not hold", label_seeds=True):
    """The verdict of rules written before the numbers (docs/RESULTS.md, "Verdict rules").

    Args:
        rules: [(name, per-seed values, threshold)], tried in order. The first rule whose mean over
            seeds is at or below its threshold names the verdict. A rule whose mean lies within one
            (population) std of its threshold makes the verdict "inconclusive", whichever side
            the mean is on: the seeds do not settle it.
        otherwise: the verdict when no rule passes.
        label_seeds: add "; 1 seed" to the verdict of a single run.

    Returns:
        e.g. "held", "did not hold", "inconclusive at the held threshold"; with one seed (no std to
        judge by) "did not hold; 1 seed".
    """
    import numpy as np

    seeds = 0
    for name, values, threshold in rules:
        values = np.asarray(values, dtype="float64")
        seeds = len(values)
        mean, std = values.mean(), values.std()
        if seeds > 1 and std > 0 and abs(mean - threshold) <= std:
            result = f"inconclusive at the {name} threshold"
            break
        if mean <= threshold:
            result = name
            break
    else:
        result = otherwise
    return result + ("; 1 seed" if seeds == 1 and label_seeds else "")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def effective_depth(shares, fraction=0.9):
    """Fewest leading blocks whose shares add up to `fraction` of the total."""
    import numpy as np

    cumulative = np.cumsum(shares)
    return int(np.searchsorted(cumulative, fraction * cumulative[-1]) + 1)
