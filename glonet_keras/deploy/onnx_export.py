"""ONNX export of the serving graphs, checked in ONNX Runtime: the second runtime of the library.

`export_onnx(model, "model.onnx", exits=[4, 8], anytime=True)` writes one ONNX file per signature
of `glonet_keras.deploy.export.export_saved_model`, from the very same TensorFlow graphs (the input
checks, the preprocessing, the batch-0 guard and the model):

    model.onnx           serve: raw input -> {logits, probabilities}
    model_exit_4.onnx    exit_4: the first 4 blocks only
    model_anytime.onnx   anytime: inputs (raw input, threshold) -> {logits, probabilities, exit}

Inputs keep the SavedModel's names and dtypes (`images` uint8, `features` float32, ...), with a
dynamic batch dimension; each file records its preprocessing, task, class names, signature and
(for anytime) the default threshold in the ONNX model's `metadata_props` (key `glonet`, JSON).

How: each signature's `tf.function` is frozen (variables -> constants) with its control flow
lowered to Switch/Merge, and tf2onnx converts it (its cond rewriter turns each lowered `tf.cond`
back into an ONNX `If`). Ops tf2onnx cannot convert are rewritten first (`Erfc`, the exact GELU
of the ViTs, as 1 - `Erf`, and `Expm1`; see `rewrite_unconvertible_ops`). The anytime graph therefore keeps its nesting: block k+1 lives in the else
branch of block k's `If`, and ONNX Runtime runs only the branch taken, so blocks after the stop are
not computed there either.

Limits: tf2onnx's conversion of nested conds grows about quadratically with their number, so an
ONNX anytime graph takes at most 16 candidate exits (`anytime_exits`, e.g. every L/16 blocks); the
SavedModel's has none. ONNX Runtime checks the input's rank and dtype itself; the graph's own
`threshold` range check (a TF Assert) has no ONNX equivalent and is dropped: there a threshold above
1 is never reached and one below 0 always is.

Needs the TensorFlow backend (a JAX-backend model is a jax2tf XlaCallModule, which tf2onnx cannot
read: save the model as .keras and load it with KERAS_BACKEND=tensorflow) and the `tf2onnx` and
`onnx` packages (`pip install tf2onnx onnx onnxruntime`).
"""

import json
import os
import tempfile

import keras

from glonet_keras import files
from glonet_keras.deploy import export as export_lib
from glonet_keras.deploy.plan import serving_plan

DEFAULT_OPSET = 17
METADATA_KEY = "glonet"
# tf2onnx rebuilds one nested If per anytime exit, and its conversion grows about quadratically in
# the nesting (measured: 8 levels 3.5 s, 16 levels 10 s, 24 levels 49 s and 1.7 GB of memory, 32
# levels over protobuf's 2 GB limit). The SavedModel's anytime signature has no such limit.
MAX_ONNX_ANYTIME_EXITS = 16


def import_converters():
    """onnx and tf2onnx, or an ImportError saying how to install them."""
    try:
        import onnx
        import tf2onnx
    except ImportError:
        raise ImportError(
            "ONNX export needs tf2onnx and onnx (and onnxruntime to run the result): "
            "pip install tf2onnx onnx onnxruntime."
        ) from None
    return onnx, tf2onnx


def onnx_paths(path, exits=(), anytime=False):
    """`{signature: file}` that `export_onnx(path, exits=..., anytime=...)` writes."""
    stem = os.fspath(path)[: -len(".onnx")]
    paths = {"serve": os.fspath(path)}
    paths.update({f"exit_{k}": f"{stem}_exit_{k}.onnx" for k in exits})
    if anytime:
        paths["anytime"] = f"{stem}_anytime.onnx"
    return paths


def export_onnx(
    model,
    path,
    *,
    exits=None,
    anytime=False,
    anytime_threshold=None,
    anytime_exits=None,
    preprocessing=None,
    input_dtype=None,
    task=None,
    class_names=None,
    opset=DEFAULT_OPSET,
    overwrite=False,
):
    """Writes the serving graph of `model` (preprocessing included) as ONNX; returns the files.

    Args:
        model: a built functional keras.Model with one named input and one output.
        path: the `.onnx` file of the `serve` graph; the `exit_<k>` and `anytime` graphs go beside
            it (see `onnx_paths`).
        exits: depths k of a GloNet to write as `exit_<k>` graphs (first k blocks only).
        anytime: also write the `anytime` graph (a GloNet classifier with separate block layers).
        anytime_threshold: the default threshold recorded in the anytime file's metadata (ONNX
            inputs have no defaults: callers send `threshold`). None: the preset's calibrated
            threshold (`deploy.default_threshold`), else 0.9.
        anytime_exits: the depths where `anytime` checks confidence (default every block); at
            most `MAX_ONNX_ANYTIME_EXITS` (16) of them in ONNX.
        preprocessing, input_dtype, task, class_names: as in `export_saved_model` (defaults from
            `model.preprocessing` and `model.preset_metadata`).
        opset: the ONNX opset.
        overwrite: replace existing files. Every file is written beside its target first and
            moved into place only once all of them converted.

    Returns:
        `{signature: path}`.

    Raises:
        ImportError: TensorFlow, tf2onnx or onnx is missing.
        ValueError: not the TensorFlow backend, a path that does not end in `.onnx` or is a
            link, or the argument errors of `export_saved_model`.
        FileExistsError: a file exists and `overwrite` is False.

    Example:
    >>> files = export_onnx(model, "/tmp/glonet.onnx", exits=[4])
    >>> session = onnxruntime.InferenceSession(files["exit_4"])
    >>> logits, probabilities = session.run(["logits", "probabilities"], {"images": raw_images})
    """
    return prepare_onnx(
        model, path, exits=exits, anytime=anytime, anytime_threshold=anytime_threshold,
        anytime_exits=anytime_exits, preprocessing=preprocessing, input_dtype=input_dtype,
        task=task, class_names=class_names, opset=opset, overwrite=overwrite,
    ).write()


class PreparedOnnx:
    """Converted ONNX models not yet written: `paths` is `{signature: file}`; `write()` writes
    them all (each beside its target, then moved into place) and returns `paths`."""

    def __init__(self, protos, paths, overwrite):
        self.protos, self.paths, self.overwrite = protos, paths, overwrite

    def write(self):
        onnx, _ = import_converters()
        _write_all(onnx, self.protos, self.paths, self.overwrite)
        return self.paths


def prepare_onnx(
    model,
    path,
    *,
    exits=None,
    anytime=False,
    anytime_threshold=None,
    anytime_exits=None,
    preprocessing=None,
    input_dtype=None,
    task=None,
    class_names=None,
    opset=DEFAULT_OPSET,
    overwrite=False,
):
    """`export_onnx` up to the write: checks and converts every graph, returns a `PreparedOnnx`.

    Same arguments and errors as `export_onnx`; nothing is written until `.write()`, so a
    program can convert before writing anything else (a model tf2onnx cannot convert then leaves
    no other output behind).
    """
    tf = export_lib.import_tensorflow()
    onnx, _ = import_converters()
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "ONNX export converts TensorFlow graphs and runs on the TensorFlow backend; the backend "
            f"is {keras.backend.backend()!r}. Save the model (.keras) and export it from a process "
            "with KERAS_BACKEND=tensorflow."
        )
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must name an .onnx file, received {path!r}.")
    plan = serving_plan(
        model, preprocessing=preprocessing, input_dtype=input_dtype, task=task,
        class_names=class_names, early_exits=False, exits=exits, anytime=anytime,
        anytime_threshold=anytime_threshold, anytime_exits=anytime_exits,
    )
    stages = plan.anytime
    if stages is not None and len(stages.exits) > MAX_ONNX_ANYTIME_EXITS:
        step = -(-stages.num_blocks // MAX_ONNX_ANYTIME_EXITS)
        raise ValueError(
            f"The ONNX anytime graph nests one If per candidate exit, and {model.name!r} has "
            f"{len(stages.exits)}: tf2onnx cannot convert more than {MAX_ONNX_ANYTIME_EXITS} "
            f"nested checks in reasonable time and memory. Pass anytime_exits with at most "
            f"{MAX_ONNX_ANYTIME_EXITS} depths, e.g. range({step}, {stages.num_blocks + 1}, {step}) "
            "(the SavedModel's anytime signature has no such limit)."
        )
    paths = onnx_paths(path, plan.exits, anytime)
    for target in paths.values():
        _check_target(target, overwrite)

    preprocessing = plan.preprocessing
    specs = export_lib.input_specs(model, preprocessing, tf.as_dtype(preprocessing.input_dtype))
    converter = _FrozenEndpoints()
    functions = {
        name: export_lib.serving_function(converter, name, computation, specs, preprocessing,
                                          plan.task)
        for name, computation in plan.computations().items()
    }
    if stages is not None:
        functions["anytime"] = export_lib.anytime_serving_function(
            converter, stages, specs, preprocessing)
    record = {key: value for key, value in plan.record().items() if key != "num_outputs"}
    record["input_name"] = specs.raw.name
    protos = {}
    for name, function in functions.items():
        defaults = {export_lib.THRESHOLD_INPUT: plan.anytime_threshold} if name == "anytime" else {}
        protos[name] = _to_onnx(onnx, function, opset)
        onnx.helper.set_model_props(protos[name], {METADATA_KEY: json.dumps(
            {**record, "signature": name, "defaults": defaults})})
    return PreparedOnnx(protos, paths, overwrite)


class _FrozenEndpoints:
    """Stands in for the ExportArchive converter of `glonet_keras.deploy.export`: each endpoint (the
    model, a segment of anytime blocks, the head) is traced and frozen on its own, its weights
    constants inside it. Freezing only the whole anytime graph instead would give every nested
    level a frozen copy of the weights of all deeper levels (they are captured through the
    nesting): O(L^2) constants, 2 GB already at 32 blocks of width 32."""

    def add_endpoint(self, name, fn, input_signature):
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        del name
        concrete = tf.function(fn, input_signature=input_signature,
                               autograph=False).get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete)
        # The frozen function returns a flat list: give callers the traced structure back.
        return lambda *args: tf.nest.pack_sequence_as(concrete.structured_outputs,
                                                      tf.nest.flatten(frozen(*args)))


def _check_target(target, overwrite):
    files.check_output_path(target, folder=False, overwrite=overwrite,
                            hint="pass overwrite=True to replace it")


def _to_onnx(onnx, function, opset):
    """The ONNX model of a traced serving tf.function, its inputs and outputs named as in TF."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = function.get_concrete_function()
    # Lowered control flow: tf2onnx rebuilds an ONNX If from each lowered cond; a functional If
    # whose branches capture the (frozen) weights as inputs loses their shapes and fails.
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=True)
    input_names = [spec.name for spec in tf.nest.flatten(concrete.structured_input_signature)]
    output_names = list(tf.nest.flatten(
        {key: key for key in concrete.structured_outputs}))  # Sorted keys: the outputs' order.
    frozen_inputs = [tensor.name for tensor in frozen.inputs]
    frozen_outputs = [tensor.name for tensor in frozen.outputs]
    proto = _convert_graph_def(frozen.graph.as_graph_def(), frozen_inputs, frozen_outputs, opset)
    renames = dict(zip(frozen_inputs, input_names))
    renames.update(zip(frozen_outputs, output_names))
    _rename(proto.graph, renames)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "batch"  # tf2onnx's `unk__<n>`: name the dynamic batch dimension.
    onnx.checker.check_model(proto)
    return proto


def _convert_graph_def(graph_def, input_names, output_names, opset):
    """tf2onnx's `convert.from_graph_def` without tf2onnx's own graph optimizers.

    They copy the graph's constants again and again: a 26 M-parameter MLP (105 MB) ran out of
    8 GB in them (4 GB without), and with nested Ifs their deep copies took minutes for 8 blocks.
    ONNX Runtime optimises the graph itself when it opens it (identity removal, constant folding,
    transpose optimisation): measured here, a CNN-20 ran 0.61 ms with them and 0.66 ms without.
    """
    import logging

    import tensorflow as tf
    from tf2onnx import optimizer, tf_loader, tfonnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # Its INFO lines flood a CLI's log.
    with tf.Graph().as_default() as graph, tf_loader.tf_session(graph=graph):
        tf.import_graph_def(graph_def, name="")
        graph_def = tf_loader.tf_optimize(input_names, output_names, graph_def)  # Grappler.
    graph_def = rewrite_unconvertible_ops(graph_def)
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        onnx_graph = tfonnx.process_tf_graph(graph, opset=opset, input_names=input_names,
                                             output_names=output_names)
    onnx_graph = optimizer.optimize_graph(onnx_graph, catch_errors=False, optimizers={})
    return onnx_graph.make_model("glonet_keras serving graph")


def rewrite_unconvertible_ops(graph_def):
    """`graph_def` with the TensorFlow ops tf2onnx 1.17 cannot convert rewritten into ones it can.

    - `Erfc(x)` as `1 - Erf(x)`: the exact GELU of every ViT (`keras.activations.gelu(approximate=
      False)` is `0.5 * x * erfc(-x / sqrt(2))` in TensorFlow), and ONNX has `Erf`.
    - `Expm1(x)` as `Exp(x) - 1`: the CELU activation.

    Both lose relative precision only where the exact value is below float32's epsilon (about
    6e-8) in absolute terms, so the absolute error stays under that; through the GELU it is under
    3e-8 * |x|. Each node keeps its name, so its consumers read the rewritten value. Nodes in the
    function library are rewritten too.
    """
    import tensorflow as tf

    rewritten = tf.compat.v1.GraphDef()
    rewritten.CopyFrom(graph_def)
    _rewrite_ops(rewritten.node)
    for function in rewritten.library.function:
        _rewrite_ops(function.node_def)
    return rewritten


# op -> (the convertible op applied to the input, then "one_minus" (1 - y) or "minus_one" (y - 1)).
_REWRITES = {"Erfc": ("Erf", "one_minus"), "Expm1": ("Exp", "minus_one")}


def _rewrite_ops(nodes):
    import tensorflow as tf

    for node in [node for node in nodes if node.op in _REWRITES]:
        inner_op, form = _REWRITES[node.op]
        dtype = node.attr["T"].type
        data = [name for name in node.input if not name.startswith("^")]
        control = [name for name in node.input if name.startswith("^")]
        inner = nodes.add(name=f"{node.name}/glonet_{inner_op.lower()}", op=inner_op, input=data)
        inner.attr["T"].type = dtype
        inner.device = node.device
        one = nodes.add(name=f"{node.name}/glonet_one", op="Const", input=control)
        one.attr["dtype"].type = dtype
        one.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto(1, dtype=tf.as_dtype(dtype), shape=[]))
        node.op = "Sub"  # Under the same name: 1 - inner, or inner - 1.
        del node.input[:]
        operands = [one.name, inner.name] if form == "one_minus" else [inner.name, one.name]
        node.input.extend(operands + control)


def _rename(graph, renames):
    """Renames tensors everywhere in `graph`, its nodes and their subgraphs (If branches read
    outer tensors by name)."""
    import onnx

    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename(attribute.g, renames)
            for subgraph in attribute.graphs:
                _rename(subgraph, renames)


def _write_all(onnx, protos, paths, overwrite):
    """Writes every file beside its target, then moves them all into place."""
    staged = {}
    try:
        for name, proto in protos.items():
            target = paths[name]
            directory = os.path.dirname(os.path.abspath(target))
            os.makedirs(directory, exist_ok=True)
            handle, temporary = tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.partial-", dir=directory)
            os.close(handle)
            staged[name] = temporary
            onnx.save(proto, temporary)
        for name, temporary in staged.items():
            _check_target(paths[name], overwrite)  # Nothing appeared or became a link meanwhile.
            os.replace(temporary, paths[name])
    finally:
        for temporary in staged.values():
            if os.path.exists(temporary):
                os.remove(temporary)


def load_metadata(path):
    """The `glonet` record an exported ONNX file carries (preprocessing, task, signature, ...)."""
    onnx, _ = import_converters()
    proto = onnx.load(os.fspath(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by export_onnx.")
