"""Pure functions behind `make_zoo.py --steps=docs`: the zoo table and the pretrained registry, both
generated from zoo/*/ only (kept apart from make_zoo.py's flags so tests can import them)."""

import json
from pathlib import Path

README_BEGIN, README_END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
FASHION_BEGIN, FASHION_END = "<!-- fashion-zoo:begin -->", "<!-- fashion-zoo:end -->"
# The test accuracies issue 8 asked of the Fashion-MNIST presets (by model family).
FASHION_TARGETS = {"GloNetCNN": 0.94, "GloNetViT": 0.91, "GloNetMLP": 0.895}
REGISTRY_FORMAT = "glonet_keras.zoo_registry/2"


def headline_ks(num_blocks):
    """The early exits the tables show: half the blocks and all but the last one."""
    return sorted({max(1, num_blocks // 2), max(1, num_blocks - 1)})


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


def fashion_table(entries):
    """docs/zoo.md's Fashion-MNIST table: each preset against the accuracy asked of it, with its
    budget, training time and machine (what a reader needs to judge a CPU-trained number)."""
    rows = [
        "| name | parameters | epochs | test accuracy | asked for | training time | machine |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, metadata, _ in entries:
        if metadata["dataset"]["name"] != "fashion_mnist":
            continue
        training = metadata["training"]
        target = FASHION_TARGETS.get(metadata["class_name"])
        if target is None:
            asked = "baseline"
        else:
            met = "met" if metadata["metrics"]["test_accuracy"] >= target else "**not met**"
            asked = f"{100 * target:.1f} % ({met})"
        rows.append(
            f"| `{name}` | {metadata['num_parameters']:,} | {training['epochs']} | "
            f"{100 * metadata['metrics']['test_accuracy']:.2f} % | {asked} | "
            f"{training['wall_seconds'] / 60:.0f} min | {training['machine']} |"
        )
    if len(rows) == 2:
        return "No Fashion-MNIST preset has been packaged yet."
    return "\n".join(rows)


def deployment_record(model, x, y, *, repeats=30, machine="2 shared CPU cores, no GPU"):
    """What a model card's deployment section shows, measured now (metadata.json `deployment`):
    the depth table (`glonet_keras.deploy.depth_table`, every k) and the anytime report, on `x, y`
    (the held-out test split, preprocessed), with the machine the latencies were measured on."""
    from glonet_keras import deploy
    from glonet_keras.skeleton import skeleton

    every_depth = range(1, skeleton(model).num_blocks + 1)
    rows = deploy.depth_table(model, (x, y), depths=every_depth, repeats=repeats)
    return {
        "evaluated_on": "test",
        "machine": machine,
        "latency": "median of warm calls of the compiled truncated model, preprocessing excluded",
        "depth_table": [row.to_dict() for row in rows],
        "anytime": deploy.anytime_report(model, x, y),
    }


def deployment_section(metadata):
    """The model card's "Deploy at a chosen depth" lines, from metadata["deployment"] ([] if none)."""
    record = metadata.get("deployment")
    if not record:
        return []
    batches = sorted({int(b) for row in record["depth_table"] for b in row["latency_ms"]})
    lines = [
        "## Deploy at a chosen depth",
        "",
        "Every k-prefix is a model (the first k blocks, the same head). Accuracy on the "
        f"{record['evaluated_on']} split; latency measured on {record['machine']} ({record['latency']}); "
        "parameters and FLOPs (2 x multiply-adds, per example) of the truncated graph. "
        "`python training/deploy.py --preset=" + metadata["name"] + " --export_dir=...` picks k on "
        "the validation split and exports `exit_k` and `anytime` signatures (docs/deploy.md).",
        "",
        "| k | accuracy (%) | " + " | ".join(f"latency, batch {b} (ms)" for b in batches)
        + " | parameters | MFLOPs |",
        "|---:|---:|" + "---:|" * len(batches) + "---:|---:|",
    ]
    for row in record["depth_table"]:
        latencies = " | ".join(f"{row['latency_ms'][str(b)]:.3f}" for b in batches)
        lines.append(f"| {row['depth']} | {100 * row['accuracy']:.1f} | {latencies} | "
                     f"{row['parameters']:,} | {row['flops'] / 1e6:.3f} |")
    anytime = record.get("anytime")
    if anytime:
        lines += [
            "",
            "Anytime inference (`anytime` signature): stop at the first exit whose top probability "
            "reaches the threshold; served one example at a time, an example costs its exit's blocks.",
            "",
            "| threshold | accuracy (%) | mean blocks computed |",
            "|---:|---:|---:|",
        ]
        for entry in anytime:
            threshold = "full model" if entry["threshold"] is None else f"{entry['threshold']:g}"
            lines.append(f"| {threshold} | {100 * entry['accuracy']:.1f} | "
                         f"{entry['mean_blocks']:.2f} of {entry['num_blocks']} |")
    return lines + [""]


def registry(entries, zoo_dir):
    """The pretrained registry (glonet_keras/presets/zoo_registry.json): per preset, what finds,
    verifies and builds it: a description, the sha256 and size of each file the loader fetches, and
    the architecture of its config.json (class and constructor arguments), so that
    `create_model(name)` builds it without fetching a file."""
    from glonet_keras import presets

    def architecture(name):
        saved = json.loads((Path(zoo_dir) / name / presets.CONFIG_FILE).read_text())
        return {"class_name": saved["class_name"], "config": saved["config"]}

    return {
        "format": REGISTRY_FORMAT,
        "generated_by": "python training/make_zoo.py --steps=docs (from zoo/*/)",
        "presets": {
            name: {
                "description": metadata["summary"],
                **architecture(name),
                "files": {
                    file_name: {
                        "sha256": presets.sha256_of(Path(zoo_dir) / name / file_name),
                        "bytes": (Path(zoo_dir) / name / file_name).stat().st_size,
                    }
                    for file_name in presets.PRESET_FILES
                },
            }
            for name, metadata, _ in entries
        },
    }


def registry_text(registry_record):
    """The registry file's exact text (stable, so a test can compare it byte for byte)."""
    return json.dumps(registry_record, indent=2, sort_keys=True) + "\n"


def replace_between(path, begin, end, body):
    text = Path(path).read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin!r} ... {end!r}.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    Path(path).write_text(f"{head}{begin}\n{body}\n{end}{tail}")
