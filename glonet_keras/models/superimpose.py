"""`glonetify`: superimpose a GloNet layer on any functional Keras model.

The paper's GloNet layer "can be superimposed on any model": sum the outputs of its blocks into a
new linear head. `glonetify` does that for a functional model (or a built Sequential), given its
block outputs or, for common keras.applications families, by finding them itself:

    backbone (unchanged, keeps its own skips) -> block outputs
        -> tap_i = [global average pooling] -> [learned linear projection, no bias]
        -> GlobalAggregation "glonet_aggregation" -> [Dropout "head_dropout"] -> Dense "head"

The tail is the one every GloNet of the library has (`skeleton.glonet_tail`), so the result works
with `truncate`, `early_exit_logits`, `block_contributions`, the plots and export. This is
superimposition, not the skip-free GloNet backbone the library's builders make: a ResNet50 keeps its
residual connections and batch norms; the new head reads the sum of every tapped block instead of
the last one only. The backbone's original head, if any, is dropped; its weights are shared.

Addressing a block output (an entry of `block_outputs`, or `stem_output`):
- `"name"`: the output of the layer, or of the `keras.ops` operation, of that name in the model's
  own graph (`[op.name for op in model.operations]` lists both kinds). A layer called several times
  (shared) is ambiguous by name: pass the KerasTensor of the call meant.
- `"backbone/name"`: a layer inside a model nested in this one (the transfer-learning pattern
  `keras.Model(inputs, head(backbone(inputs)))` or `Sequential([backbone, head])`), one `/` per
  level of nesting (Keras names never contain `/`).
- A KerasTensor of the model's graph, or of the graph of a model nested in it (e.g.
  `backbone.get_layer("conv2_block1_out").output`, or a `keras.ops` result kept while building the
  model): exactly that tensor, including one call of a shared layer. A KerasTensor of any other
  graph is refused, even when this model has a layer of the same name.
Taps inside a nested model come out of one feature model, `<backbone>_features` =
`keras.Model(backbone.inputs, [its tapped tensors])`, called like the backbone was (same inputs,
same `training=` argument), so its weights are the backbone's own.
"""

import dataclasses
import difflib
import re

import keras

from glonet_keras import skeleton
from glonet_keras.layers import AGGREGATION_MODES
from glonet_keras.models import common

__all__ = ["SuperimposedGloNet", "glonetify", "suggest_block_outputs"]


@keras.saving.register_keras_serializable(package="glonet_keras")
class SuperimposedGloNet(keras.Model):
    """A functional model with the GloNet skeleton over another model's blocks (see `glonetify`).

    Construct it through `glonetify`. The constructor is a functional one, so a `.keras` file stores
    the graph and reloads this class with safe_mode on. `num_blocks` and `block_outputs` are read
    from the graph (`skeleton.skeleton`), so a reloaded model has them too.

    Raises:
        NotAGloNetError: the graph lacks the GloNet skeleton.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        super().__init__(inputs, outputs, name=name, **kwargs)
        skeleton.skeleton(self)  # Refuse, at construction or load, a graph that is not a GloNet.

    @property
    def num_blocks(self):
        """The number of aggregated blocks L (the stem's tap not counted)."""
        return skeleton.skeleton(self).num_blocks

    @property
    def block_outputs(self):
        """`{"block_1": KerasTensor, ...}`: the tapped tensors of this model's graph, shallow to deep."""
        return skeleton.skeleton(self).block_outputs


def glonetify(
    model,
    block_outputs=None,
    num_classes=None,
    *,
    width=None,
    aggregation="sum",
    pooling="average",
    stem_output=None,
    dropout=0.0,
    name=None,
):
    """Superimposes GloNet on a functional Keras model: its tapped blocks are summed into a new head.

    Args:
        model: a functional `keras.Model` (e.g. `keras.applications.ResNet50(weights=None)`), a
            built `keras.Sequential`, or a model that nests one of them. Its weights are shared with
            the result, not copied.
        block_outputs: the block outputs to tap, in graph order (shallow to deep): layer or
            operation names, `"nested_model/name"` paths, KerasTensors of the model's graph or of a
            nested model's graph (see the module docstring), or a dict of them (e.g. a library
            baseline's `.block_outputs`). Default: `suggest_block_outputs(model)`.
        num_classes: outputs of the new linear head (logits). Required.
        width: the aggregation width. Default: the channel count of the last tapped block.
            Taps of another width get a learned linear projection (Dense without bias), one per
            distinct source width, shared by the taps of that width (i.e. per stage).
        aggregation: `"sum"` (default, the paper) or `"mean"`.
        pooling: how a tap reduces a block output of rank > 2: `"average"` (global average pooling),
            `"cls"` or `"token_mean"` (token sequences of transformers).
        stem_output: optionally, one more tensor (addressed like a block output) that enters the
            sum as `tap_0`; it must not come after any block.
        dropout: dropout rate before the head.
        name: name of the new model (default `<model.name>_glonet`).

    Returns:
        A `SuperimposedGloNet`: taps `tap_1..tap_L` (and `tap_0`), `glonet_aggregation` and `head`,
        with `num_blocks` and `block_outputs` ("block_i" -> KerasTensor), also after a reload.

    Raises:
        ValueError: for a non-functional model, an empty or malformed `block_outputs`, unknown names
            (close names and nested paths are listed), a shared layer given by name, a KerasTensor of
            another model's graph, block outputs out of graph order (naming which comes before
            which), untappable outputs, or a model of no supported family when `block_outputs` is
            omitted.

    Example:

    >>> backbone = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    >>> model = glonetify(backbone, num_classes=10)   # 16 taps, one per bottleneck
    >>> first_stage = analysis.truncate(model, 3)     # the same head over conv2 only
    """
    inputs = _check_functional(model)
    num_classes = common.check_positive_int("num_classes", num_classes)
    common.check_choice("aggregation", aggregation, AGGREGATION_MODES)
    common.check_choice("pooling", pooling, skeleton.TAP_POOLINGS)
    dropout = common.check_dropout(dropout)
    if width is not None:
        width = common.check_positive_int("width", width)
    resolver = _Resolver(model)
    if block_outputs is None:
        block_outputs = _suggest(resolver)
    blocks = [resolver.resolve(item, f"block_outputs[{i}]")
              for i, item in enumerate(_entries(block_outputs))]
    stem = resolver.resolve(stem_output, "stem_output") if stem_output is not None else None
    _check_unique(blocks, stem)
    _check_graph_order(blocks, stem)
    tensors = _materialize(blocks + ([stem] if stem is not None else []))
    dtype = common.dtype_name(model.dtype_policy)
    outputs, _ = skeleton.glonet_tail(
        tensors[: len(blocks)],
        num_classes=num_classes,
        stem_output=tensors[-1] if stem is not None else None,
        aggregation=aggregation,
        pooling=pooling,
        width=width,
        dropout=dropout,
        dtype=dtype,
    )
    try:
        return SuperimposedGloNet(
            inputs[0] if len(inputs) == 1 else inputs, outputs, name=name or f"{model.name}_glonet"
        )
    except ValueError as error:
        if isinstance(error, skeleton.NotAGloNetError):
            raise
        raise ValueError(
            f"Could not superimpose GloNet on {model.name!r}: {error} (a backbone layer on the "
            "tapped path may already use one of the names tap_i, tap_i_pool, tap_projection_*, "
            f"{skeleton.AGGREGATION}, {skeleton.HEAD_DROPOUT}, {skeleton.HEAD} or <nested>_features)."
        ) from error


def suggest_block_outputs(model):
    """The block outputs of a keras.applications model, for `glonetify(model, num_classes=...)`.

    Supported families (matched by their layer names, so a reloaded or renamed model works too):
    - ResNet, ResNetV2 (`ResNet50`...`ResNet152V2`): every `convS_blockB_out`.
    - MobileNetV2, MobileNetV3 and EfficientNet (B0-B7, V2): every inverted-residual block's output,
      its `..._add` where the block has a skip, else its `..._project_bn`.
    - ConvNeXt (Tiny-XLarge): every block's residual add (`keras.ops` operations, by their names).
    Where the model ends in a feature layer after its last block (ResNetV2's `post_relu`,
    MobileNet's last 1x1 convolution, EfficientNet's `top_activation`), that is the last entry: the
    deepest tap is then the tensor the original classifier pooled.

    A model that nests one backbone of these families (transfer learning) gets
    `"backbone_name/layer_name"` paths.

    Args:
        model: a functional `keras.Model` or a built `keras.Sequential`.

    Returns:
        A list of names (or nested paths), shallow to deep, that `glonetify` accepts.

    Raises:
        ValueError: no supported family (the message lists them), or several nested backbones.

    Example:

    >>> backbone = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
    >>> suggest_block_outputs(backbone)[:3]
    ['expanded_conv_project_BN', 'block_1_project_BN', 'block_2_add']
    """
    _check_functional(model)
    return _suggest(_Resolver(model))


# --------------------------------------------------------------------------------------------
# The graph of one model, and addresses in it.


def _check_functional(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"glonetify expects a functional keras.Model, received {type(model).__name__}."
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"glonetify needs a functional keras.Model (built with keras.Model(inputs, outputs) or "
            f"a built Sequential); {model.name!r} ({type(model).__name__}) has no symbolic inputs. "
            "Subclassed models have no graph to tap: rebuild the model functionally."
        )
    return list(inputs)


def _node(tensor):
    """The node (one call of an operation) that produced `tensor`."""
    history = tensor._keras_history
    return history.operation._inbound_nodes[history.node_index]


def _has_graph(operation):
    if not isinstance(operation, keras.Model):
        return False
    try:
        return bool(operation.inputs)
    except (AttributeError, ValueError):
        return False


class _Graph:
    """One model's own functional graph: its nodes (operation calls) in topological order.

    Nodes, not layers: a shared layer has one node per call, and a `keras.ops` operation (not a
    Layer) has a node like any layer. A nested model is one node here; its inside is its own _Graph.
    """

    def __init__(self, model):
        self.model = model
        self.nodes = _topological_nodes(model.outputs)
        self._position = {id(node): i for i, node in enumerate(self.nodes)}
        self.calls = {}
        self._consumers = {}
        for node in self.nodes:
            self.calls.setdefault(node.operation.name, []).append(node)
            for tensor in node.input_tensors:
                self._consumers.setdefault(id(tensor), []).append(node.operation.name)

    def __contains__(self, node):
        return id(node) in self._position

    def names_in_order(self):
        return list(self.calls)

    def consumers(self, tensor):
        """Names of the operations of this graph that read `tensor`."""
        return self._consumers.get(id(tensor), [])

    def depends_on(self, node, earlier, *, strict):
        """True when `node` reads, directly or not, the output of `earlier` (or is it, unless strict).

        An ancestor comes earlier in topological order, so the usual case (taps listed in graph
        order) is answered without a search; otherwise a backward search stops below `earlier`.
        """
        if earlier is node:
            return not strict
        floor = self._position[id(earlier)]
        if floor > self._position[id(node)]:
            return False
        stack, seen = list(node.parent_nodes), set()
        while stack:
            parent = stack.pop()
            if parent is earlier:
                return True
            if id(parent) in seen or self._position.get(id(parent), -1) < floor:
                continue
            seen.add(id(parent))
            stack.extend(parent.parent_nodes)
        return False


def _topological_nodes(outputs):
    """The nodes that `outputs` depend on, each after all of its parents (iterative DFS)."""
    order, seen = [], set()
    stack = [(_node(tensor), False) for tensor in reversed(list(outputs))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in reversed(node.parent_nodes)
                     if id(parent) not in seen)
    return order


@dataclasses.dataclass(frozen=True)
class _Location:
    """A tensor to tap: `tensor` of `graph`, reached through `calls` of nested models.

    `calls` is `((graph, node), ...)` from the outermost model inward: each node is the call of a
    nested model in the graph before it. `label` names the tensor in messages.
    """

    label: str
    calls: tuple
    graph: _Graph
    tensor: object

    def key(self):
        return tuple(id(node) for _, node in self.calls) + (id(self.tensor),)

    def graph_at(self, level):
        """The graph this location is in at nesting `level` (0: the outermost model's)."""
        return self.calls[level][0] if level < len(self.calls) else self.graph


class _Resolver:
    """Turns names, paths and KerasTensors into `_Location`s of one model (graphs built once)."""

    def __init__(self, model):
        self._graphs = {}
        self.root = self.graph(model)

    def graph(self, model):
        if id(model) not in self._graphs:
            self._graphs[id(model)] = _Graph(model)
        return self._graphs[id(model)]

    def nested_calls(self, graph):
        """The nodes of `graph` that call a nested functional model."""
        return [node for node in graph.nodes if _has_graph(node.operation)]

    def resolve(self, item, what):
        if isinstance(item, str):
            location = self._by_path(item, what)
        elif isinstance(item, keras.KerasTensor) and hasattr(item, "_keras_history"):
            location = self._by_tensor(item, what)
        else:
            raise ValueError(
                f"{what} must be a layer or operation name, a 'nested_model/name' path or a KerasTensor "
                f"of {self.root.model.name!r}'s graph, received {item!r}."
            )
        _check_tappable(location, what)
        return location

    def _by_path(self, path, what):
        graph, calls = self.root, ()
        *models, name = path.split("/")
        for model_name in models:
            node = self._single_call(graph, model_name, what, path)
            if not _has_graph(node.operation):
                raise ValueError(
                    f"{what} {path!r}: {model_name!r} is a {type(node.operation).__name__}, not a "
                    "nested functional model or built Sequential, so there is nothing inside it to tap."
                )
            calls += ((graph, node),)
            graph = self.graph(node.operation)
        node = self._single_call(graph, name, what, path)
        if len(node.output_tensors) != 1:
            raise ValueError(
                f"{what} {path!r} returns {len(node.output_tensors)} tensors: pass the KerasTensor "
                "of the one to tap."
            )
        return _Location(path, calls, graph, node.output_tensors[0])

    def _single_call(self, graph, name, what, path):
        nodes = graph.calls.get(name)
        if not nodes:
            raise ValueError(f"{what}: {self._unknown_name(graph, name, path)}")
        if len(nodes) > 1:
            readers = "; ".join(
                f"call {i} feeds {graph.consumers(node.output_tensors[0]) or 'the output'}"
                for i, node in enumerate(nodes, start=1)
            )
            raise ValueError(
                f"{what} {path!r}: {name!r} is called {len(nodes)} times in "
                f"{graph.model.name!r} (shared), so its name does not say which call to tap "
                f"({readers}). Pass the KerasTensor of the call meant: the tensor that call "
                "returned when the model was built, or the `.input` of a layer that reads it."
            )
        return nodes[0]

    def _unknown_name(self, graph, name, path):
        message = f"{graph.model.name!r} has no layer or operation named {name!r}"
        if path != name:
            message += f" (in path {path!r})"
        close = difflib.get_close_matches(name, list(graph.calls), n=5, cutoff=0.6)
        if close:
            message += f". Close names: {close}"
        nested = self._nested_paths(graph, name)
        if nested:
            message += f". Inside nested models: {nested[:5]} (address them with these paths)"
        return message + "."

    def _nested_paths(self, graph, name, prefix=""):
        found = []
        for node in self.nested_calls(graph):
            inner = self.graph(node.operation)
            path = f"{prefix}{node.operation.name}/"
            if name in inner.calls:
                found.append(path + name)
            found += self._nested_paths(inner, name, path)
        return found

    def _by_tensor(self, tensor, what):
        matches = self._find(self.root, tensor, ())
        if not matches:
            operation = tensor._keras_history.operation
            raise ValueError(
                f"{what}: the KerasTensor {tensor.name!r} made by "
                f"{getattr(operation, 'name', operation)!r} is not part of the graph of "
                f"{self.root.model.name!r} nor of any model nested in it: it belongs to another "
                "model (a same-named layer of this model is a different call). Pass a tensor of "
                "this model's graph, or a name."
            )
        if len(matches) > 1:
            paths = [self._label(calls, graph, tensor) for calls, graph in matches]
            raise ValueError(
                f"{what}: the KerasTensor {tensor.name!r} lies inside a nested model that "
                f"{self.root.model.name!r} calls several times ({paths}), so it does not say which "
                "call to tap. Tap the outputs of the call meant instead, or glonetify the nested "
                "model itself."
            )
        ((calls, graph),) = matches
        return _Location(self._label(calls, graph, tensor), calls, graph, tensor)

    def _find(self, graph, tensor, calls):
        """Every `(calls, graph)` under `graph` whose own graph holds `tensor` (identity, not name)."""
        history = tensor._keras_history
        node = _node(tensor)
        if node in graph and node.output_tensors[history.tensor_index] is tensor:
            return [(calls, graph)]
        found = []
        for call in self.nested_calls(graph):
            found += self._find(self.graph(call.operation), tensor, calls + ((graph, call),))
        return found

    @staticmethod
    def _label(calls, graph, tensor):
        operation = tensor._keras_history.operation
        nodes = graph.calls[operation.name]
        label = "/".join([node.operation.name for _, node in calls] + [operation.name])
        if len(nodes) > 1:
            index = next(i for i, node in enumerate(nodes, start=1) if node is _node(tensor))
            label += f" (call {index} of {len(nodes)})"
        return label


def _entries(block_outputs):
    if isinstance(block_outputs, dict):
        block_outputs = list(block_outputs.values())
    if isinstance(block_outputs, str) or not isinstance(block_outputs, (list, tuple)):
        raise ValueError(
            "`block_outputs` must be a list of layer names, paths or KerasTensors of the model, in "
            f"graph order, received {type(block_outputs).__name__}: {block_outputs!r}."
        )
    if not block_outputs:
        raise ValueError("`block_outputs` is empty: name at least one block output to tap.")
    return list(block_outputs)


def _check_unique(blocks, stem):
    seen = {}
    for index, location in enumerate(blocks):
        first = seen.setdefault(location.key(), index)
        if first != index:
            raise ValueError(
                f"`block_outputs` lists {location.label!r} more than once (positions {first} and "
                f"{index})."
            )
    if stem is not None and stem.key() in seen:
        raise ValueError(f"`stem_output` {stem.label!r} is also listed in `block_outputs`.")


def _check_tappable(location, what):
    tensor = location.tensor
    if len(tensor.shape) not in (2, 3, 4, 5) or tensor.shape[-1] is None:
        raise ValueError(
            f"{what} {location.label!r} must be one tensor of shape (batch, [spatial...,] channels) with a "
            f"known channel count to be tapped, received shape {tensor.shape}."
        )


# --------------------------------------------------------------------------------------------
# Graph order: a tap may not depend on a tap listed after it.


def _is_before(earlier, later):
    """True when `earlier` is computed strictly before `later` (`later` depends on it)."""
    level = 0
    while (level < len(earlier.calls) and level < len(later.calls)
           and earlier.calls[level][1] is later.calls[level][1]):
        level += 1
    graph = later.graph_at(level)
    # Below the common level, a location inside a nested model's call stands for that call: all
    # of it runs after the call's inputs and before its outputs.
    earlier_call = earlier.calls[level][1] if level < len(earlier.calls) else None
    later_call = later.calls[level][1] if level < len(later.calls) else None
    earlier_node = earlier_call or _node(earlier.tensor)
    if later_call is not None:
        return graph.depends_on(later_call, earlier_node, strict=True)
    # `later` may be an output of the very call that `earlier` lies inside: not strict then.
    return graph.depends_on(_node(later.tensor), earlier_node, strict=earlier_call is None)


def _check_graph_order(blocks, stem):
    for i, location in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            if _is_before(blocks[j], location):
                raise ValueError(
                    f"`block_outputs` are out of graph order: block_outputs[{j}] "
                    f"({blocks[j].label!r}, tap_{j + 1}) comes before block_outputs[{i}] "
                    f"({location.label!r}, tap_{i + 1}), which depends on it. List the block "
                    "outputs shallow to deep."
                )
        if stem is not None and _is_before(location, stem):
            raise ValueError(
                f"`stem_output` {stem.label!r} comes after block_outputs[{i}] ({location.label!r}), "
                "which it depends on: the stem must precede every block."
            )


# --------------------------------------------------------------------------------------------
# From locations to tensors of the outermost graph.


def _materialize(locations):
    """Tensors of the outermost graph of `locations`, in order.

    Taps inside a nested model come out of one feature model over its graph (`<name>_features`),
    called on the arguments of the nested model's own call, so weights and the call's `training=`
    setting are the backbone's. Where a tap also reads the nested model's outputs (a layer after
    the backbone), the feature model returns them too and the nodes between are called again on
    them: the result holds the backbone's layers once, and runs them once.
    """
    graph = locations[0].graph_at(0)
    groups = {}
    for index, location in enumerate(locations):
        if location.calls:
            _, call = location.calls[0]
            inner = dataclasses.replace(location, calls=location.calls[1:])
            groups.setdefault(id(call), []).append((index, inner))
    plain = [location.tensor for location in locations if not location.calls]
    needed = _nodes_needed(graph, plain, [node for node in graph.nodes if id(node) in groups])
    # The calls whose own outputs are read: by a tap, or by a node on the way to one.
    read = {id(parent) for node in needed.values() for parent in node.parent_nodes}
    read |= {id(_node(tensor)) for tensor in plain}
    tensors = [None] * len(locations)
    replaced = {}  # id(KerasTensor of `graph`) -> the tensor that replaces it
    for node in graph.nodes:
        if id(node) not in needed:
            continue
        args, kwargs = node.arguments.convert(
            lambda x: replaced.get(id(x), x) if isinstance(x, keras.KerasTensor) else x
        )
        if id(node) in groups:
            members = groups[id(node)]
            taps = _materialize([inner for _, inner in members])
            outputs = keras.tree.flatten(_feature_model(node.operation, taps, id(node) in read)(
                *args, **kwargs))
            for (index, _), tensor in zip(members, outputs):
                tensors[index] = tensor
            outputs = outputs[len(taps):]
        elif any(id(x) in replaced for x in node.input_tensors):
            outputs = keras.tree.flatten(node.operation(*args, **kwargs))
        else:
            continue
        for old, new in zip(node.output_tensors, outputs):
            replaced[id(old)] = new
    for index, location in enumerate(locations):
        if not location.calls:
            tensors[index] = replaced.get(id(location.tensor), location.tensor)
    return tensors


def _feature_model(nested, taps, with_outputs):
    """`keras.Model` from the nested model's inputs to `taps` (and its own outputs)."""
    model_inputs = nested.inputs[0] if isinstance(nested, keras.Sequential) else nested.input
    outputs = list(taps) + (list(nested.outputs) if with_outputs else [])
    return keras.Model(model_inputs, outputs, name=f"{nested.name}_features")


def _nodes_needed(graph, tensors, calls):
    """`{id: node}` of the nodes of `graph` that `tensors` and the nested `calls` depend on."""
    needed = {}
    stack = [_node(tensor) for tensor in tensors] + list(calls)
    while stack:
        node = stack.pop()
        if id(node) not in needed and node in graph:
            needed[id(node)] = node
            stack.extend(node.parent_nodes)
    return needed


# --------------------------------------------------------------------------------------------
# Suggested block outputs of keras.applications families.


def _resnet_blocks(graph):
    return [name for name in graph.names_in_order() if re.fullmatch(r"conv\d+_block\d+_out", name)]


def _inverted_residual_blocks(graph):
    """MobileNetV2/V3, EfficientNet: a block ends in `<block>_add` if it has a skip, else its BN."""
    blocks = []
    for name in graph.names_in_order():
        match = re.fullmatch(r"(.+)_project_bn", name, flags=re.IGNORECASE)
        if match:
            add = f"{match.group(1)}_add"
            blocks.append(add if add in graph.calls else name)
    return blocks


def _convnext_blocks(graph):
    """ConvNeXt: each block ends in `inputs + <block>_identity(x)`, a keras.ops add."""
    blocks = []
    for name in graph.names_in_order():
        if re.fullmatch(r".+_stage_\d+_block_\d+_identity", name):
            (node,) = graph.calls[name]
            readers = graph.consumers(node.output_tensors[0])
            if len(readers) == 1:
                blocks.append(readers[0])
    return blocks


_FAMILIES = (
    ("ResNet / ResNetV2", _resnet_blocks),
    ("ConvNeXt (Tiny-XLarge)", _convnext_blocks),
    ("MobileNetV2 / MobileNetV3 / EfficientNet (B0-B7, V2)", _inverted_residual_blocks),
)
_GLOBAL_POOLINGS = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)


def _final_features(graph, last_block):
    """The name of what the original classifier pools after `last_block` (or of a headless output).

    Only a global pooling after the last block counts: MobileNetV3's squeeze-excite blocks pool too.
    """
    block_node = graph.calls[last_block][-1]
    pools = [node for node in graph.nodes if isinstance(node.operation, _GLOBAL_POOLINGS)
             and graph.depends_on(node, block_node, strict=True)]
    if pools:
        tensor = pools[0].input_tensors[0]
    elif len(graph.model.outputs) == 1 and len(graph.model.outputs[0].shape) > 2:
        tensor = graph.model.outputs[0]
    else:
        return last_block
    return tensor._keras_history.operation.name


def _family_blocks(graph):
    for _, rule in _FAMILIES:
        blocks = rule(graph)
        if blocks:
            final = _final_features(graph, blocks[-1])
            if final != blocks[-1] and len(graph.calls.get(final, ())) == 1:
                blocks.append(final)
            return blocks
    return []


def _suggest(resolver):
    found = []  # (path prefix, blocks) of the outermost models of a known family

    def visit(graph, prefix):
        blocks = _family_blocks(graph)
        if blocks:
            found.append((prefix, blocks))
            return
        for call in resolver.nested_calls(graph):
            visit(resolver.graph(call.operation), f"{prefix}{call.operation.name}/")

    visit(resolver.root, "")
    name = resolver.root.model.name
    if not found:
        families = "; ".join(family for family, _ in _FAMILIES)
        raise ValueError(
            f"Cannot suggest block outputs for {name!r}: neither it nor a model nested in it is of "
            f"a supported keras.applications family ({families}). Pass `block_outputs` (layer "
            "names, 'nested/name' paths or KerasTensors, shallow to deep)."
        )
    if len(found) > 1:
        raise ValueError(
            f"{name!r} nests several backbones of supported families ({[p for p, _ in found]}): "
            "pass `block_outputs` to say which blocks to tap."
        )
    ((prefix, blocks),) = found
    return [prefix + block for block in blocks]
