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
