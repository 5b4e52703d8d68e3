"""Pure functions behind `make_zoo.py --steps=docs`: the zoo table and the registry lines, both
generated from zoo/*/metadata.json (kept apart from make_zoo.py's flags so tests can import them)."""

import json
from pathlib import Path


def headline_ks(num_blocks):
    """The early exits the tables show: half the blocks and all but the last one."""
    return sorted({max(1, num_blocks // 2), max(1, num_blocks - 1)})


README_BEGIN, README_END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
REGISTRY_BEGIN, REGISTRY_END = "# BEGIN ZOO REGISTRY", "# END ZOO REGISTRY"


def load_zoo(zoo_dir):
    """(name, metadata, config) of every preset under `zoo_dir`, sorted by name."""
    entries = []
    for directory in sorted(Path(zoo_dir).iterdir()):
        if (directory / "metadata.json").is_file():
            metadata = json.loads((directory / "metadata.json").read_text())
            config = json.loads((directory / "config.json").read_text())
            entries.append((directory.name, metadata, config))
    return entries


def zoo_table(entries):
    """The markdown zoo table of the README and docs/zoo.md."""
    rows = [
        "| name | class | parameters | data set | accuracy | early exit (first k of L blocks) | size |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for name, metadata, _ in entries:
        metrics = metadata["metrics"]
        exits = metrics.get("early_exit_accuracy")
        if exits:
            blocks = len(exits)
            exit_text = ", ".join(
                f"{100 * exits[str(k)]:.1f} % (k={k}/{blocks})" for k in headline_ks(blocks)
            )
        else:
            exit_text = "n/a (baseline)"
        rows.append(
            f"| `{name}` | {metadata['class_name']} | {metadata['num_parameters']:,} | "
            f"{metadata['dataset']['name']} | {100 * metrics['test_accuracy']:.2f} % | {exit_text} | "
            f"{metadata['size_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(rows)


def registry_lines(entries, zoo_dir):
    """One `register_model(...)` line per preset: class, config, sha256 of each fetched file, ..."""
    from glonet_keras import presets

    lines = []
    for name, metadata, config in entries:
        architecture = {k: v for k, v in config["config"].items() if k not in ("name", "trainable")}
        files = {f: presets.sha256_of(Path(zoo_dir) / name / f) for f in presets.PRESET_FILES}
        lines.append(
            f"register_model({name!r}, {config['class_name']!r}, {architecture!r}, files={files!r}, "
            f"dataset={metadata['dataset']['name']!r}, "
            f"preprocessing={_registry_preprocessing(metadata)!r}, "
            f"metrics={{'test_accuracy': {metadata['metrics']['test_accuracy']!r}}}, "
            f"license={metadata['license']!r})  # noqa: E501"
        )
    return lines


def _registry_preprocessing(metadata):
    return {**metadata["preprocessing"], "input_shape": metadata["input"]["model_input_shape"]}


def replace_between(path, begin, end, body):
    text = Path(path).read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin!r} ... {end!r}.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{begin}\n{body}\n{end}{tail}")
