"""Every Python block of README.md and docs/*.md runs as written, or says why it cannot.

The blocks of one file run in order in ONE fresh interpreter (a later block may use the names of an
earlier one, as a reader would), in an empty working directory, with Keras' cache there too. A block
that cannot run here (it needs a GPU, a cluster, TF Serving, a download) is preceded by the line

    <!-- docs-test: skip (the reason) -->

and a skip without a reason fails.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(
    os.path.relpath(path, REPO_ROOT) for path in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
)
_BLOCK = re.compile(r"(?P<marker><!-- docs-test: skip(?P<reason>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```",
                    re.S)


def python_blocks(path):
    """[(code, skip reason or None)] of a Markdown file, in order."""
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        text = handle.read()
    blocks = []
    for match in _BLOCK.finditer(text):
        reason = None
        if match.group("marker"):
            reason = match.group("reason").strip().strip("()").strip()
            assert reason, f"{path}: a docs-test skip marker needs a reason in parentheses"
        blocks.append((match.group("code"), reason))
    return blocks


def test_the_docs_have_python_blocks():
    assert python_blocks("README.md"), "README.md has no Python example"


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)])
def test_python_blocks_run_as_written(path, tmp_path):
    runnable = [code for code, reason in python_blocks(path) if reason is None]
    if not runnable:
        pytest.skip(f"{path}: every block is marked not runnable (with its reason)")
    script = "\n".join(
        f"print('--- block {i}', flush=True)\n{code}" for i, code in enumerate(runnable, start=1)
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, KERAS_HOME=str(tmp_path / "keras_home"),
               TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    env.pop("GLONET_KERAS_ORIGIN", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{path}: a Python block failed.\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )


# ------------------------------------------------------------------ command lines in the docs

FLAG_DOCUMENTS = ["docs/deploy.md", "docs/analysis.md", "docs/zoo.md"]
_COMMAND = re.compile(r"python (?P<script>(?:training|benchmarks)/\w+\.py)(?P<args>(?:\\\n|[^`\n])*)")
_DEFINE = re.compile(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"")


def defined_flags(script):
    """The absl flags `script` (a path under the repository) defines, with those of the sibling
    modules it imports (`from benchmarks.timing import ...`, `import experiment_common`)."""
    path = os.path.join(REPO_ROOT, script)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    names = set(_DEFINE.findall(text))
    folder = os.path.dirname(script)
    for module in re.findall(r"^(?:from|import) ([\w.]+)", text, re.M):
        # A sibling (`import experiment_common`, `from benchmarks.timing import ...`) or a library
        # module a shim runs (`from glonet_keras.cli.deploy import ...`).
        candidates = [os.path.join(folder, f"{module.rsplit('.', 1)[-1]}.py"),
                      module.replace(".", os.sep) + ".py"]
        for candidate in candidates:
            if candidate != script and os.path.isfile(os.path.join(REPO_ROOT, candidate)):
                with open(os.path.join(REPO_ROOT, candidate), encoding="utf-8") as handle:
                    names |= set(_DEFINE.findall(handle.read()))
    return names


@pytest.mark.parametrize("path", FLAG_DOCUMENTS)
def test_every_flag_the_docs_give_exists(path):
    # A stale flag in the docs (a renamed or removed one) fails here, in milliseconds, instead of
    # in the hands of a reader. Booleans may be written --noflag.
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        text = handle.read()
    commands = list(_COMMAND.finditer(text))
    known = set()
    for command in commands:
        flags = defined_flags(command.group("script"))
        known |= flags
        # A flag inside another's value (`--extra_train_flags=--epochs=60`) is another program's.
        for name in re.findall(r"(?<![=,])--(\w+)", command.group("args")):
            assert name in flags or (name.startswith("no") and name[2:] in flags), (
                f"{path}: `{command.group(0).strip()}` passes --{name}, which "
                f"{command.group('script')} does not define")
    # Flags named in the prose belong to one of the programs the page runs or names.
    for script in set(re.findall(r"(?:training|benchmarks)/\w+\.py", text)):
        if os.path.isfile(os.path.join(REPO_ROOT, script)):
            known |= defined_flags(script)
    prose = _COMMAND.sub("", text)
    for name in set(re.findall(r"`--(\w+)", prose)):
        assert name in known or (name.startswith("no") and name[2:] in known), (
            f"{path} names --{name}, which none of its programs defines")
