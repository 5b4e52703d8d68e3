"""The SGEMM GPU-kernel-performance CSV (UCI): a strict reader and its regression source."""

import functools
import os

import numpy as np

from glonet_keras.data.base import (
    DatasetUnavailableError, _ArraySource, _check_split_sizes, _split_indices, open_regular_file,
)

SGEMM_FILE = "sgemm_product.csv"
SGEMM_NUM_PARAMETERS = 14


def read_sgemm_csv(path):
    """Reads an SGEMM-layout CSV -> (features float32 (n, 14), log mean run time float32 (n,)).

    The header must name 14 parameter columns and the four run-time columns `Run1`..`Run4`
    (UCI's names are `Run1 (ms)`, ...). Every cell must be a number that is finite in float32,
    and every run time positive, so that nothing non-finite reaches the statistics.

    Raises:
        ValueError: naming the file and, for a bad row, its line (the header is line 1) and
            column: an empty or header-only file, a missing column, a row of the wrong length,
            a cell that is not a number, NaN, infinite or beyond float32, a run time <= 0.
    """
    try:
        with open_regular_file(path, "r") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text CSV file ({error}).") from error
    rows = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError(f"{path}: the file is empty; expected a header and data rows.")
    (_, header_line), rows = rows[0], rows[1:]
    header = [column.strip() for column in header_line.split(",")]
    run_columns = []
    for run in ("Run1", "Run2", "Run3", "Run4"):
        matches = [i for i, column in enumerate(header) if column.split(" ")[0] == run]
        if len(matches) != 1:
            raise ValueError(f"{path}: expected one column named {run!r} in the header {header}.")
        run_columns.append(matches[0])
    parameter_columns = [i for i in range(len(header)) if i not in run_columns]
    if len(parameter_columns) != SGEMM_NUM_PARAMETERS:
        raise ValueError(
            f"{path}: expected {SGEMM_NUM_PARAMETERS} parameter columns besides Run1..Run4, found "
            f"{len(parameter_columns)}: {[header[i] for i in parameter_columns]}."
        )
    if not rows:
        raise ValueError(f"{path}: a header and no data rows.")
    table = _parse_csv_rows(path, header, rows)
    with np.errstate(over="ignore"):
        finite = np.isfinite(table.astype("float32"))
    _raise_on_bad_cells(path, header, rows, ~finite,
                        "not finite in float32 (NaN, infinite, or beyond +-3.4e38)")
    nonpositive = np.zeros_like(finite)
    nonpositive[:, run_columns] = table[:, run_columns] <= 0
    _raise_on_bad_cells(path, header, rows, nonpositive, "run times must be positive (log target)")
    x = table[:, parameter_columns].astype("float32")
    y = np.log(table[:, run_columns].mean(axis=1)).astype("float32")
    return x, y


def _parse_csv_rows(path, header, rows):
    """The numbers of `rows` ((line number, text) pairs): a float64 table, the header's width."""
    try:
        return np.loadtxt([line for _, line in rows], delimiter=",", dtype="float64", ndmin=2,
                          comments=None)
    except ValueError as error:
        # Find the culprit again to name its line (only on this error path).
        for number, line in rows:
            cells = line.split(",")
            if len(cells) != len(header):
                raise ValueError(f"{path}: line {number} has {len(cells)} values, the header "
                                 f"{len(header)}.") from error
            for column, cell in zip(header, cells):
                try:
                    float(cell)
                except ValueError:
                    raise ValueError(f"{path}: line {number}, column {column!r}: {cell.strip()!r} "
                                     "is not a number.") from error
        raise ValueError(f"{path}: {error}") from error


def _raise_on_bad_cells(path, header, rows, bad, reason, shown=5):
    """ValueError naming the first `shown` flagged cells by line and column, and the total."""
    cells = np.argwhere(bad)
    if not len(cells):
        return
    named = "; ".join(
        f"line {rows[row][0]}, column {header[column]!r}: {rows[row][1].split(',')[column].strip()}"
        for row, column in cells[:shown]
    )
    more = f" (and {len(cells) - shown} more)" if len(cells) > shown else ""
    raise ValueError(f"{path}: {len(cells)} cell(s) {reason}: {named}{more}.")


def _sgemm_path(data_dir):
    if data_dir is None:
        raise DatasetUnavailableError(
            "Data set 'sgemm' needs data_dir: the SGEMM CSV file or a directory holding "
            f"{SGEMM_FILE!r} (download it from the UCI repository yourself)."
        )
    path = os.path.join(data_dir, SGEMM_FILE) if os.path.isdir(data_dir) else data_dir
    if not os.path.isfile(path):
        raise DatasetUnavailableError(f"Data set 'sgemm': no CSV file at {path!r}.")
    return path


def _sgemm_source(path, seed, validation_fraction):
    stat = os.stat(path)
    return _cached_sgemm_source(path, (stat.st_size, stat.st_mtime_ns), seed, validation_fraction)


@functools.lru_cache(maxsize=4)
def _cached_sgemm_source(path, stamp, seed, validation_fraction):
    del stamp  # Part of the cache key only: an edited file is read again.
    x, y = read_sgemm_csv(path)
    # No official split: a seeded 80/20 train/test split, validation carved from train.
    order = np.random.default_rng(seed).permutation(len(y))
    num_test = int(round(0.2 * len(y)))
    test, rest = order[:num_test], order[num_test:]
    train, validation = _split_indices(len(rest), validation_fraction, seed + 1)
    splits = {
        "train": (x[rest[train]], y[rest[train]]),
        "validation": (x[rest[validation]], y[rest[validation]]),
        "test": (x[test], y[test]),
    }
    _check_split_sizes(splits, validation_fraction, f"Data set 'sgemm' ({path}, {len(y)} rows)")
    return _ArraySource("sgemm", splits, "regression", 1, path)
