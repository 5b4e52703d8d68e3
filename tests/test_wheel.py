"""An installed wheel loads a pretrained model with no configuration and no network.

Builds the wheel from a clean copy of the checkout, installs it into a fresh virtual environment
(no system site-packages; the heavy dependencies come from the running environment through a .pth
file, so nothing is downloaded), and loads a preset from a directory outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a checkout holds that a wheel must not be built from.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     "runs", "artifacts", ".pytest_cache", ".whl", ".site")

_LOAD_OFFLINE = textwrap.dedent(
    """
    import json
    import glonet_keras
    from glonet_keras import presets
    from glonet_keras.data import load_arrays

    model = glonet_keras.create_model("glonet_mlp_digits", pretrained=True)
    _, (x, y) = load_arrays("digits")
    accuracy = float((model.predict(model.preprocessing(x), verbose=0).argmax(-1) == y).mean())
    print(json.dumps({
        "module": glonet_keras.__file__,
        "origin": presets.resolve_origin(),
        "pretrained": glonet_keras.list_models(pretrained=True),
        "accuracy": accuracy,
        "published": model.preset_metadata["metrics"]["test_accuracy"],
    }))
    """
)


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _build_wheel(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(tmp_path / "dist"), str(source)])
    (wheel,) = (tmp_path / "dist").glob("glonet_keras-*.whl")
    return wheel


def _fresh_environment(tmp_path, wheel):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    purelib = purelib.strip()
    # keras, tensorflow, scikit-learn... from this environment, after the venv's own packages.
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "-q", str(wheel)])
    return venv, python


@pytest.mark.slow
def test_an_installed_wheel_loads_a_pretrained_model_offline_with_no_configuration(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "glonet_keras").rglob("*.py"):
        assert f"glonet_keras/{path.relative_to(REPO / 'glonet_keras')}" in names, path
    assert "glonet_keras/presets/zoo_registry.json" in names
    for path in (REPO / "zoo").rglob("*"):
        if path.is_file():
            assert f"glonet_keras/zoo/{path.relative_to(REPO / 'zoo')}" in names, path

    venv, python = _fresh_environment(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "GLONET_KERAS_ORIGIN", "KERAS_HOME")}
    env.update(GLONET_KERAS_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    report = json.loads(_run([str(python), "-c", _LOAD_OFFLINE], cwd=elsewhere, env=env)
                        .strip().splitlines()[-1])

    assert Path(report["module"]).is_relative_to(venv)  # the installed copy, not the checkout
    assert report["origin"].startswith(venv.as_uri())  # the zoo shipped inside the wheel
    assert report["pretrained"] == sorted(p.name for p in (REPO / "zoo").iterdir() if p.is_dir())
    assert abs(report["accuracy"] - report["published"]) <= 0.005

    # The training program is installed as a console script with train.py's flags (issue 22).
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "glonet-train = glonet_keras.cli.train:run" in scripts
    assert "glonet-deploy = glonet_keras.cli.deploy:console" in scripts
    deploy = subprocess.run([str(venv / "bin" / "glonet-deploy")], capture_output=True, text=True,
                            timeout=300, cwd=elsewhere, env=env)
    assert deploy.returncode == 2 and deploy.stderr.strip().splitlines()[-1] == (
        "glonet-deploy: error: give --preset (a zoo name or directory) or --run_dir (a train.py run)")
    program = venv / "bin" / "glonet-train"
    assert program.exists()
    finished = subprocess.run(
        [str(program), "--epochs=0", f"--model_dir={tmp_path / 'run'}"], capture_output=True,
        text=True, timeout=300, cwd=elsewhere, env=env)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert finished.stderr.strip().splitlines()[-1] == (
        "glonet-train: error: `epochs` must be an integer >= 1, received 0.")
    helped = subprocess.run([str(program), "--helpfull"], capture_output=True, text=True,
                            timeout=300, cwd=elsewhere, env=env)
    for flag in ("--preset", "--channels", "--model_dir", "--export_dir", "--strategy"):
        assert flag in helped.stdout, flag
