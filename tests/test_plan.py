"""The serving plan: what the SavedModel, ONNX and REST paths serve is settled once, in one place."""

import json

import numpy as np
import pytest

import glonet_keras
from glonet_keras.deploy import export, plan as plan_lib
from glonet_keras.deploy.plan import serving_plan


@pytest.fixture(scope="module")
def model():
    model = glonet_keras.GloNetMLP(num_blocks=4, width=8, input_shape=(6,), num_classes=3)
    model.preset_metadata = {"task": "classification", "class_names": ["a", "b", "c"]}
    return model


def test_the_plan_reads_the_skeleton_once_and_settles_every_signature(model, monkeypatch):
    calls = []
    real = plan_lib.skeleton
    monkeypatch.setattr(plan_lib, "skeleton", lambda m: calls.append(m) or real(m))
    plan = serving_plan(model, exits=[3, 1, 3], anytime=True, anytime_exits=[2, 4],
                        anytime_threshold=0.7)
    assert len(calls) == 1
    assert (plan.task, plan.class_names, plan.num_blocks, plan.exits) == (
        "classification", ["a", "b", "c"], 4, [1, 3])
    assert list(plan.anytime.exits) == [2, 4] and plan.anytime_threshold == 0.7
    assert list(plan.computations()) == ["serve", "early_exits", "exit_1", "exit_3"]
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.testing.assert_allclose(plan.computations()["exit_3"].predict(x, verbose=0),
                               glonet_keras.analysis.truncate(model, 3).predict(x, verbose=0))
    assert plan.record()["anytime_exits"] == [2, 4]


def test_the_plan_refuses_what_cannot_be_served(model):
    with pytest.raises(ValueError, match=r"integers in \[1, 4\]"):
        serving_plan(model, exits=[5])
    with pytest.raises(ValueError, match="regression model"):
        serving_plan(model, task="regression", class_names=None, anytime=True)
    plain = glonet_keras.PlainMLP(num_blocks=2, width=4, input_shape=(6,), num_classes=3)
    with pytest.raises(ValueError, match="needs a GloNet"):
        serving_plan(plain, exits=[1])
    assert serving_plan(plain).computations().keys() == {"serve"}


def test_the_saved_model_records_the_plan(model, tmp_path):
    pytest.importorskip("tensorflow")
    path = export.export_saved_model(model, tmp_path, exits=[2], anytime=True)
    with open(f"{path}/{export.METADATA_FILE}") as stream:
        recorded = json.load(stream)
    expected = serving_plan(model, exits=[2], anytime=True).record()
    assert {key: recorded[key] for key in expected} == expected
