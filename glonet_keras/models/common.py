"""Pieces shared by every model family: argument checks, initialisers, norms, heads, the base class."""

import contextlib
import difflib
import inspect
import numbers
import re
import sys

import keras

from glonet_keras import presets, skeleton
from glonet_keras.layers import AGGREGATION_MODES, DenseStack, TorchBiasUniform
from glonet_keras.presets.registry import foreign_argument_advice, short_repr

INITIALIZERS = ("he", "torch")
# A GloNet head's initialiser: None follows `initializer`; "zeros" starts every logit at zero (the
# uniform prediction), as timm's ViTs do with a zero-initialised head. A sum of unnormalised taps
# (a transformer's residual stream) is large at initialisation, so a He head starts far from
# uniform (GloNetViT on Fashion-MNIST: loss 21 before training; docs/zoo.md).
HEAD_INITIALIZERS = (None, "zeros")
NORMALIZATIONS = (None, "batch", "layer")


# No size, count or dimension of a model is larger: a bigger integer (10**400 from a JSON preset) is a
# mistake or an attack, refused by name here rather than deep inside Keras as an OverflowError.
MAX_INT = 2**31 - 1
# The most dimensions an example may have (TensorFlow's kernels stop at 8 for many ops).
MAX_RANK = 8


def check_positive_int(name, value):
    """Returns `value` as a Python int in [1, MAX_INT] (numpy integers too); else ValueError."""
    if (isinstance(value, (bool,)) or not isinstance(value, numbers.Integral) or value < 1
            or value > MAX_INT):
        raise ValueError(
            f"`{name}` must be an integer >= 1 (and <= {MAX_INT}), received {short_repr(value)}."
        )
    return int(value)


def check_shape(shape, what, *, allow_none, ranks=None):
    """`input_shape` as a tuple of Python ints (None allowed where `allow_none`), or ValueError.

    `what` names the model family in the message; `ranks` restricts the number of dimensions.
    """
    def valid(d):
        if d is None:
            return allow_none
        return not isinstance(d, bool) and isinstance(d, numbers.Integral) and 1 <= d <= MAX_INT

    if (
        not isinstance(shape, (tuple, list))
        or not shape
        or len(shape) > MAX_RANK
        or (ranks is not None and len(shape) not in ranks)
        or not all(valid(d) for d in shape)
    ):
        sizes = "positive sizes (None for unknown ones)" if allow_none else "fully known positive sizes"
        rank_text = (f" of {' or '.join(map(str, ranks))} dimensions" if ranks
                     else f" of at most {MAX_RANK} dimensions")
        raise ValueError(
            f"`input_shape` of {what} must be a tuple{rank_text} of {sizes}, without the batch "
            f"dimension; received {short_repr(shape)}."
        )
    return tuple(None if d is None else int(d) for d in shape)


def size_int(value):
    """A size read from an unchecked config: the integer, or 1 where it is not an integer >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    return 1


def size_shape(shape):
    """An unchecked `input_shape` as sizes (unknown or invalid ones count as 1)."""
    if isinstance(shape, (list, tuple)) and shape:
        return [size_int(d) for d in shape]
    return [1]


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown `{name}` {value!r}. Allowed values: {list(allowed)}.")
    return value


def check_activation(activation):
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown `activation` {activation!r}: use a name from keras.activations "
            "(e.g. 'relu', 'leaky_relu', 'gelu')."
        ) from error
    return activation


def check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be a float in [0, 1), received {dropout!r}.")
    return float(dropout)


def check_common(args):
    """Validates the arguments every family shares, normalising numbers in `args` in place."""
    check_activation(args["activation"])
    if "normalization" in args:
        check_choice("normalization", args["normalization"], NORMALIZATIONS)
    check_choice("initializer", args["initializer"], INITIALIZERS)
    args["dropout"] = check_dropout(args["dropout"])
    args["num_classes"] = check_positive_int("num_classes", args["num_classes"])
    if "aggregation" in args:
        check_choice("aggregation", args["aggregation"], AGGREGATION_MODES)
    if "head_initializer" in args:
        check_choice("head_initializer", args["head_initializer"], HEAD_INITIALIZERS)
    if "include_stem" in args and not isinstance(args["include_stem"], bool):
        raise ValueError(f"`include_stem` must be True or False, received {args['include_stem']!r}.")


def kernel_initializer(initializer):
    """He (good practice, keeps a deep ReLU chain's activations stable) or PyTorch's default."""
    if initializer == "he":
        return keras.initializers.HeNormal()
    # PyTorch's default (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def bias_initializer(initializer, fan_in):
    if initializer == "he":
        return "zeros"
    return TorchBiasUniform(fan_in)


def dense(x, units, *, initializer, name, dtype, use_bias=True):
    fan_in = x.shape[-1]
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer(initializer),
        bias_initializer=bias_initializer(initializer, fan_in),
        name=name,
        dtype=dtype,
    )(x)


def conv(x, filters, kernel_size, *, strides=1, initializer, name, dtype, use_bias=True):
    """A 'same'-padded convolution of the input's rank (1-D signals or 2-D images)."""
    spatial_rank = len(x.shape) - 2
    layer_class = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[spatial_rank]
    fan_in = kernel_size**spatial_rank * x.shape[-1]
    return layer_class(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=kernel_initializer(initializer),
        bias_initializer=bias_initializer(initializer, fan_in),
        name=name,
        dtype=dtype,
    )(x)


def norm(x, kind, *, name, dtype):
    if kind is None:
        return x
    if kind == "batch":
        return keras.layers.BatchNormalization(name=name, dtype=dtype)(x)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=name, dtype=dtype)(x)


def activation(x, name, *, act, dtype):
    return keras.layers.Activation(act, name=name, dtype=dtype)(x)


def global_pool(x, *, name, dtype):
    layer_class = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D}
    return layer_class[len(x.shape)](name=name, dtype=dtype)(x)


def head(x, *, num_classes, dropout, initializer, dtype):
    """The linear head (after optional dropout) that every baseline ends with."""
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name=skeleton.HEAD_DROPOUT, dtype=dtype)(x)
    return dense(x, num_classes, initializer=initializer, name=skeleton.HEAD, dtype=dtype)


def dtype_name(dtype):
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
        return keras.dtype_policies.serialize(dtype)
    if isinstance(dtype, keras.DTypePolicy):
        return dtype.name
    return keras.backend.standardize_dtype(dtype)


# The classes a serialised `dtype` may name (a config can come from an untrusted preset file).
_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy", "QuantizedDTypePolicy",
                   "QuantizedFloat8DTypePolicy", "Int4DTypePolicy", "DTypePolicyMap")


def policy_from_config(value):
    """A config's `dtype` as get_config wrote it: a name, or a serialised `DTypePolicyMap`.

    A dict is deserialised only when every object it names is a dtype policy: Keras would
    otherwise build whatever registered class a hostile preset names.
    """
    if not isinstance(value, dict):
        return value

    def named_classes(node):
        if isinstance(node, dict):
            if "class_name" in node:
                yield node["class_name"]
            for child in node.values():
                yield from named_classes(child)
        elif isinstance(node, (list, tuple)):
            for child in node:
                yield from named_classes(child)

    foreign = sorted({str(c) for c in named_classes(value) if c not in _POLICY_CLASSES})
    if foreign or value.get("class_name") != "DTypePolicyMap":
        raise ValueError(
            f"`dtype` must be a dtype policy name or a serialised DTypePolicyMap; the given dict "
            f"names {foreign or [value.get('class_name')]}."
        )
    policy = keras.dtype_policies.deserialize(value)
    if not isinstance(policy, keras.dtype_policies.DTypePolicyMap) or not all(
            isinstance(policy[key], keras.DTypePolicy) for key in policy):
        raise ValueError("`dtype` must deserialise to a DTypePolicyMap of dtype policies.")
    return policy


def _layer_policy(layer):
    """The policy `layer` computes with (its entry when it was given a DTypePolicyMap)."""
    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path:
        return policy[layer.path]
    return policy


def _matches(layer, filters):
    """`keras.Model.quantize`'s `filters` rule: regexes searched in the name, or a callable."""
    if filters is None:
        return True
    if isinstance(filters, str):
        filters = [filters]
    if isinstance(filters, (list, tuple)):
        return any(re.search(pattern, layer.name) for pattern in filters)
    return bool(filters(layer))


# Keyword arguments a model accepts besides its constructor's own (what `get_config` adds).
_MODEL_KWARGS = ("name", "trainable")
def _graph_nodes(outputs):
    """How many operation calls (nodes) lead to `outputs`, counted without recursion."""
    seen, stack = set(), list(keras.tree.flatten(outputs))
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None:
            continue
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(keras.tree.flatten(node.input_tensors))
    return len(seen)


@contextlib.contextmanager
def deep_graph_headroom(outputs):
    """Room on Python's stack for Keras to map a deep functional graph.

    Keras walks a functional graph recursively, several frames per layer on the longest path, so
    an unrolled chain of a few hundred blocks (a ResNet-v2 MLP of 1,000 blocks has about 4,000
    layers) exceeds Python's default limit of 1,000 frames with a RecursionError. This raises the
    limit for the duration of the block, in proportion to the graph, and restores it afterwards.
    """
    previous = sys.getrecursionlimit()
    needed = 1000 + 8 * _graph_nodes(outputs)
    if needed > previous:
        sys.setrecursionlimit(needed)
    try:
        yield
    finally:
        if needed > previous:
            sys.setrecursionlimit(previous)


class GloNetModelBase(keras.Model):
    """Base of every model the library builds (keras-hub pattern).

    A subclass's `__init__` declares every argument explicitly, validates them (`_arguments`), builds
    the functional graph, then records its config (`_finish`): `get_config()` returns exactly the
    constructor arguments, so `from_config(get_config())` rebuilds the same model. An unknown
    keyword raises TypeError naming the closest valid argument; the default model name is the class's
    snake_case name (`default_name`), never a process-dependent `glo_net_cnn_1`.
    """

    default_name = None
    # The constructor arguments that decide the model's size, named in a refusal of a preset that
    # is too large (`estimate_size`).
    size_arguments = ()
    # How raw inputs become model inputs (a `glonet_keras.data.preprocessing.Preprocessing`): set on a
    # model loaded from a preset or a run directory, None on a freshly built one.
    preprocessing = None

    def __init__(self, *args, **kwargs):
        outputs = kwargs.get("outputs", args[1] if len(args) > 1 else None)
        with deep_graph_headroom(outputs):
            super().__init__(*args, **kwargs)

    @classmethod
    def estimate_size(cls, config):
        """`{"parameters": int, "blocks": int, "unrolled": bool}` for constructor arguments `config`,
        computed with Python integers and nothing built (so a preset can be refused before any
        allocation). An estimate within a small factor; invalid arguments count as 1 (the
        constructor refuses them by name)."""
        raise NotImplementedError

    @classmethod
    def _config_with_defaults(cls, config):
        parameters = inspect.signature(cls.__init__).parameters
        defaults = {name: p.default for name, p in parameters.items()
                    if p.default is not inspect.Parameter.empty}
        return {**defaults, **config}

    def __call__(self, *args, **kwargs):
        self._refuse_raw_integers(args[0] if args else kwargs.get("inputs"))
        return super().__call__(*args, **kwargs)

    def _refuse_raw_integers(self, x):
        """A preset trained on uint8 images takes preprocessed floats: raw integers are refused.

        Keras would cast raw pixels (0..255) to float32 and predict silently wrong classes.
        """
        raw = getattr(self.preprocessing, "input_dtype", None)
        dtype = getattr(x, "dtype", None)
        if raw is None or dtype is None or not raw.startswith(("uint", "int")):
            return
        try:
            name = keras.backend.standardize_dtype(dtype)
        except (ValueError, TypeError, AttributeError):
            return
        if name.startswith(("uint", "int")):
            pre = self.preprocessing
            raise ValueError(
                f"{self.name!r} received {name} inputs of shape {tuple(x.shape)}: it takes "
                f"preprocessed float32 inputs, not raw {raw} images. Apply `model.preprocess(x)` "
                f"first (its preprocessing: x * {pre.scale:.6g}, minus mean {list(pre.mean)}, over "
                f"std {list(pre.std)}), or export it with export_saved_model, whose graph takes "
                "raw images."
            )

    def preprocess(self, x):
        """Raw inputs -> model inputs with the model's `preprocessing` (numpy in, numpy out).

        Example: `model.predict(model.preprocess(uint8_images))` for a model loaded from a preset.

        Raises:
            ValueError: the model has no preprocessing record (built here, not loaded).
        """
        if self.preprocessing is None:
            raise ValueError(
                f"{self.name!r} has no preprocessing record: only a model loaded from a preset or "
                "a run directory carries one (`model.preprocessing`). Preprocess the inputs "
                "yourself, or set `model.preprocessing` to a glonet_keras.data.preprocessing."
                "Preprocessing."
            )
        return self.preprocessing(x)

    @classmethod
    def _valid_arguments(cls):
        parameters = inspect.signature(cls.__init__).parameters
        named = [name for name, p in parameters.items()
                 if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        return named + list(_MODEL_KWARGS)

    @classmethod
    def check_arguments(cls, kwargs):
        """Raises TypeError for any keyword `cls` does not take, naming the closest valid one."""
        valid = cls._valid_arguments()
        for key in kwargs:
            if key in valid:
                continue
            advice = foreign_argument_advice(key, cls)
            if key in ("aggregation", "include_stem", "head_initializer"):
                advice = f"only GloNet models take it; {cls.__name__} is a baseline without a sum"
            if advice is None:
                close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
                advice = f"did you mean `{close[0]}`" if close else f"valid arguments: {valid}"
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {key!r}: {advice}.")

    def _arguments(self, local_variables):
        """The constructor's arguments (from `locals()`), with `**kwargs` checked and split off.

        Returns `(args, model_kwargs)`: `args` holds only the declared arguments; `model_kwargs` the
        `name` (defaulting to `default_name`) and `trainable` for keras.Model.
        """
        args = dict(local_variables)
        for key in ("self", "__class__"):
            args.pop(key, None)
        model_kwargs = dict(args.pop("kwargs", {}))
        type(self).check_arguments(model_kwargs)
        if model_kwargs.get("name") is None:
            model_kwargs["name"] = self.default_name
        return args, model_kwargs

    def _finish(self, constructor_args, block_outputs, num_blocks=None):
        """Records the constructor arguments and the block outputs (a list, or a dict by name).

        `num_blocks` defaults to the number of block outputs (a scanned stack passes it: its one
        stacked output holds every block).
        """
        self._constructor_args = dict(constructor_args)
        dtype = self._constructor_args.get("dtype")
        # keras.Model (a functional one) drops its `dtype` argument, so `model.dtype_policy` said
        # float32 for a mixed model: give it the policy every layer was built with. Assigned, not
        # set through the property, whose setter would quantize again under a quantized policy.
        if dtype is not None:
            self._dtype_policy = keras.dtype_policies.get(dtype)
        self._constructor_args["dtype"] = dtype_name(dtype)
        # Stable keys ("block_1", ...) so downstream code never slices `model.layers`.
        if not isinstance(block_outputs, dict):
            block_outputs = {skeleton.block_key(i): x for i, x in enumerate(block_outputs, start=1)}
        self.block_outputs = dict(block_outputs)
        self.num_blocks = len(self.block_outputs) if num_blocks is None else num_blocks
        # Keras' default spec lets a wrong channel count through when the expected last axis is 1
        # (it allows squeezing that axis); an exact spec names both shapes at the model's boundary.
        (model_input,) = self.inputs
        self.input_spec = keras.InputSpec(
            shape=(None,) + tuple(model_input.shape[1:]), name=model_input.name
        )

    @staticmethod
    def _glonet_outputs(blocks, args, *, stem=None, width=None, pooling="average", stacked=False):
        """The GloNet tail (taps, aggregation, head) over `blocks`, from a GloNet's arguments."""
        if args.get("head_initializer") == "zeros":
            head_kernel_initializer = head_bias_initializer = "zeros"
        else:
            head_kernel_initializer = kernel_initializer(args["initializer"])
            head_bias_initializer = bias_initializer(args["initializer"], width or blocks[-1].shape[-1])
        outputs, _ = skeleton.glonet_tail(
            blocks,
            num_classes=args["num_classes"],
            stem_output=stem if args["include_stem"] else None,
            aggregation=args["aggregation"],
            pooling=pooling,
            width=width,
            dropout=args["dropout"],
            head_initializer=head_kernel_initializer,
            head_bias_initializer=head_bias_initializer,
            stacked=stacked,
            dtype=args["dtype"],
        )
        return outputs

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            **self._constructor_args,
            "dtype": self._dtype_config(),
        }

    def _dtype_config(self):
        """The `dtype` of the config: the policy's name, or a serialised `DTypePolicyMap` when the
        model was built with one or holds quantized layers (keras-hub's convention).

        A quantized layer's entry (`int8_from_float32`, ...) makes `from_config` build that layer
        with its quantized variables, so the saved weights (a `.keras` file, a preset) load.
        """
        policy = self.dtype_policy
        quantized = {layer.path: _layer_policy(layer)
                     for layer in self._flatten_layers(include_self=False)
                     if layer.path and layer.quantization_mode is not None}
        is_map = isinstance(policy, keras.dtype_policies.DTypePolicyMap)
        if not quantized and not is_map:
            return self._constructor_args["dtype"]
        entries = {key: policy[key] for key in policy} if is_map else {}
        policy_map = keras.dtype_policies.DTypePolicyMap(
            default_policy=policy.default_policy if is_map else policy,
            policy_map={**entries, **quantized},
        )
        return keras.dtype_policies.serialize(policy_map)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """`keras.Model.quantize`, except that the linear `head` stays in its float policy.

        The head holds width x classes weights (a negligible share), and int8 / float8 layers
        also quantize their input: the head's input is the GloNet sum, and quantize(sum of taps)
        is not the sum of the quantized taps, so `analysis.block_contributions` would no longer
        add up to the logits. Every other supported layer (Dense, EinsumDense: the stem, the
        blocks' dense layers, the tap projections, attention) is quantized; convolutions and the
        scanned `DenseStack` have no quantized form in Keras and stay in float.
        """
        head = self.get_layer(skeleton.HEAD)
        if filters is not None and not isinstance(filters, (str, list, tuple)) and not callable(
                filters):
            return super().quantize(mode, config=config, filters=filters, **kwargs)
        return super().quantize(
            mode, config=config, filters=lambda layer: layer is not head and _matches(layer, filters),
            **kwargs,
        )

    def _holds_dense_stack(self):
        return any(isinstance(layer, DenseStack) for layer in self._flatten_layers())

    def compile(self, *args, jit_compile="auto", **kwargs):
        # A DenseStack cannot be compiled with XLA on TensorFlow (see its docstring): say so by
        # name rather than letting Keras fall back with a generic warning.
        if self._holds_dense_stack() and keras.backend.backend() == "tensorflow":
            if jit_compile is True:
                raise ValueError(
                    f"{type(self).__name__} {self.name!r} holds a scanned DenseStack, which cannot "
                    "be compiled with XLA on TensorFlow (TF cannot compile a scan's gradient): use "
                    "jit_compile=False (or 'auto'), or the JAX backend."
                )
            jit_compile = False
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    # Keras skips compiling a loaded model whose class overrides `compile` unless the class also
    # overrides these two (it warned, then `fit` failed with "No loss to compute"). The saved
    # config is what `compile` recorded; compiling from it goes through the override above, so a
    # scanned model loaded on another backend gets its own jit_compile.
    def get_compile_config(self):
        return super().get_compile_config()

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        if config.get("jit_compile") is True and self._holds_dense_stack():
            config["jit_compile"] = "auto"
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_preset(cls, preset, *, load_weights=True, cache_dir=None, origin=None, **overrides):
        """Loads a pretrained model: a registered name, a preset directory or `.keras` file, or a URL.

        Called on a subclass (e.g. `GloNetCNN.from_preset`), the preset must hold that class.
        `load_weights=False` builds the preset's architecture without fetching or loading its
        weights (keras-hub's argument). `**overrides` are constructor arguments (e.g.
        `num_classes=3` for a fresh head), exactly as in
        `glonet_keras.create_model(name, pretrained=True, **overrides)`.
        Example: `glonet_keras.GloNetModelBase.from_preset("glonet_cnn_digits")` (see
        `glonet_keras.presets`).
        """
        expected = None if cls is GloNetModelBase else cls
        return presets.from_preset(preset, expected, load_weights=load_weights,
                                   cache_dir=cache_dir, origin=origin, **overrides)

    def save_to_preset(self, preset_dir, *, name=None):
        """Writes config.json, model.weights.h5 and metadata.json to `preset_dir` (from_preset reads it).

        The saved model is named `name`, by default the preset folder's name (so an export of the
        loaded preset lands in `<export_dir>/<preset name>/`).
        """
        return presets.save_preset(self, preset_dir, name=name)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["dtype"] = policy_from_config(config.get("dtype"))
        for key in ("input_shape", "blocks_per_stage"):
            if isinstance(config.get(key), list):
                config[key] = tuple(config[key])
        return cls(**config)
