"""The `Preprocessing` record: checked when made, one JSON form, numpy without TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from glonet_keras.data.preprocessing import Preprocessing, load_preprocessing, save_preprocessing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5, 0.4, 0.3),
                       std=(0.2, 0.25, 0.3), image_size=(6, 5))


@pytest.mark.parametrize(
    "field, value",
    [
        ("input_dtype", "string"),
        ("input_dtype", "bool"),
        ("input_dtype", "complex64"),
        ("input_dtype", None),
        ("input_dtype", 5),
        ("scale", 0),
        ("scale", -1.0),
        ("scale", float("inf")),
        ("scale", float("nan")),
        ("scale", "1"),
        ("scale", True),
        ("mean", (float("nan"),)),
        ("mean", (float("inf"),)),
        ("mean", "0.5"),
        ("mean", 0.5),
        ("mean", ()),
        ("mean", (True,)),
        ("std", (0.0,)),
        ("std", (-1.0,)),
        ("std", (float("nan"),)),
        ("image_size", (0, 8)),
        ("image_size", (8,)),
        ("image_size", (8, 8, 8)),
        ("image_size", (8.0, 8.0)),
        ("image_size", (True, 8)),
        ("image_size", "88"),
        ("image_size", 8),
    ],
)
def test_invalid_fields_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        Preprocessing(**{field: value})


def test_mean_and_std_must_have_the_same_length():
    with pytest.raises(ValueError, match="`mean` and `std` must have the same length"):
        Preprocessing(mean=(0.5, 0.5), std=(1.0,))


def test_values_are_normalised_so_equal_records_are_equal():
    loose = Preprocessing(input_dtype=np.uint8, scale=np.float64(0.5), mean=[np.float32(1.0)],
                          std=np.array([2.0]), image_size=[np.int64(8), 9])
    strict = Preprocessing(input_dtype="uint8", scale=0.5, mean=(1.0,), std=(2.0,),
                           image_size=(8, 9))
    assert loose == strict and hash(loose) == hash(strict)
    assert type(loose.input_dtype) is str and type(loose.image_size[0]) is int
    json.dumps(loose.to_dict())  # plain JSON types only


def test_the_dict_round_trips_with_its_five_keys(tmp_path):
    record = IMAGES.to_dict()
    assert set(record) == {"input_dtype", "scale", "mean", "std", "image_size"}
    assert Preprocessing.from_dict(json.loads(json.dumps(record))) == IMAGES
    save_preprocessing(IMAGES, tmp_path / "p.json")
    assert load_preprocessing(tmp_path / "p.json") == IMAGES


@pytest.mark.parametrize(
    "record, message",
    [
        ([1, 2], "must be a dict, received list"),
        ("float32", "must be a dict, received str"),
        (None, "must be a dict, received NoneType"),
        ({**IMAGES.to_dict(), "input_shape": [8, 8, 1]}, "Unknown preprocessing keys \\['input_shape'\\]"),
        ({k: v for k, v in IMAGES.to_dict().items() if k != "std"}, "has no \\['std'\\]"),
        ({**IMAGES.to_dict(), "scale": "0.5"}, "`scale`"),
        ({**IMAGES.to_dict(), "mean": {"r": 0.5}}, "`mean`"),
        ({**IMAGES.to_dict(), "image_size": [8.5, 8]}, "`image_size`"),
        ({**IMAGES.to_dict(), "input_dtype": ["uint8"]}, "`input_dtype`"),
    ],
)
def test_from_dict_refuses_anything_but_the_record(record, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(record)


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "preprocessing.json"
    path.write_text('{"input_dtype": "float32", "scale": ')
    with pytest.raises(ValueError, match="preprocessing.json is not a valid preprocessing record"):
        load_preprocessing(path)


def test_numpy_in_numpy_out_and_tensorflow_in_tensorflow_out():
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    in_numpy = IMAGES(images)
    assert isinstance(in_numpy, np.ndarray) and in_numpy.dtype == np.float32
    assert in_numpy.shape == (2, 6, 5, 3)
    in_tf = IMAGES(tf.constant(images))
    assert tf.is_tensor(in_tf) and in_tf.dtype == tf.float32
    np.testing.assert_allclose(in_numpy, in_tf.numpy(), rtol=1e-6, atol=1e-6)
    # The formula, independently: ((x / 255) - mean) / std per channel, here without a resize.
    flat = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=IMAGES.mean, std=IMAGES.std)
    expected = (images / 255.0 - np.array(IMAGES.mean)) / np.array(IMAGES.std)
    np.testing.assert_allclose(flat(images), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flat(tf.constant(images)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_works_without_tensorflow_and_says_when_resizing_needs_it():
    # The JAX machines have no TensorFlow: block its import, as if it were not installed.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["tensorflow"] = None
        import numpy as np
        import glonet_keras
        from glonet_keras.data.preprocessing import Preprocessing

        record = Preprocessing(input_dtype="uint8", scale=1 / 255, mean=(0.5,), std=(0.25,))
        out = record(np.full((1, 2, 2, 1), 255, "uint8"))
        assert isinstance(out, np.ndarray) and out.dtype == np.float32, type(out)
        np.testing.assert_allclose(out, 2.0)
        try:
            Preprocessing(image_size=(4, 4))(np.zeros((1, 2, 2, 1), "float32"))
        except ImportError as error:
            print("ImportError:", error)
        assert sys.modules["tensorflow"] is None
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ImportError: Resizing to image_size=(4, 4) uses tf.image.resize" in done.stdout
    assert "TensorFlow is not installed" in done.stdout


# Issue 22: records finite in float64 but not in float32 were accepted, then served NaN.
@pytest.mark.parametrize("record, message", [
    (dict(mean=(1e300,)), "`mean` must be finite in float32"),
    (dict(mean=(-1e39,)), "`mean` must be finite in float32"),
    (dict(mean=(10**400,)), "`mean` must be finite in float32"),
    (dict(std=(1e-300,)), "`std` must be >= "),
    (dict(std=(1e-39,)), "`std` must be >= "),   # subnormal in float32: precision lost
    (dict(std=(1e39,)), "`std` must be finite in float32"),
    (dict(scale=1e-300), "`scale` must be >= "),  # 0 in float32: every input the same
    (dict(scale=1e300), "`scale` must be finite in float32"),
    (dict(scale=10**400), "`scale` must be finite in float32"),
    (dict(mean=(1e30,), std=(1e-30,)), "mean / std overflows float32"),
    (dict(scale=1e30, std=(1e-30,)), "scale / std overflows float32"),
    (dict(mean=(0.0,) * 5000, std=(1.0,) * 5000), "at most 4096 channels"),
    (dict(image_size=(10**400, 8)), "`image_size` must be None or two integers in \\[1, 16384\\]"),
    (dict(image_size=(16385, 8)), "`image_size`"),
])
def test_a_record_that_float32_cannot_hold_is_refused(record, message):
    with pytest.raises(ValueError, match=message) as error:
        Preprocessing(**record)
    assert len(str(error.value)) < 400


def test_records_at_the_float32_limits_stay_finite_when_applied():
    edge = Preprocessing(scale=1e-30, mean=(1e-30,), std=(1e-30,))
    out = edge(np.array([[0.0, 1.0, 255.0]], "float32"))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [[-1.0, 0.0, 254.0]], rtol=1e-5)


@pytest.mark.parametrize("record, shape, message", [
    (IMAGES, (None, 6, 5, 1), "3 channel statistics"),
    (IMAGES, (None, 3), "not \\(height, width, channels\\)"),
    (IMAGES, (None, 5, 6, 3), "takes \\(5, 6\\) images"),
])
def test_a_record_that_does_not_fit_the_model_input_says_why(record, shape, message):
    with pytest.raises(ValueError, match=message):
        record.check_fits(shape, "the model")


def test_a_record_fits_inputs_of_its_channels_or_any_with_one_statistic():
    assert IMAGES.check_fits((None, 6, 5, 3)) is IMAGES
    assert IMAGES.check_fits((None, None, None, 3)) is IMAGES
    Preprocessing(mean=(0.5,), std=(2.0,)).check_fits((None, 40))
