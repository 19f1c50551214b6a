"""Cut any traceable model into a chain of pieces where a single tensor flows.

Early exits need the model as a chain ``piece_0 -> piece_1 -> ... -> piece_k`` (each
piece reads only the previous piece's output) so that computation can stop after a
piece and each piece can be exported on its own.  Models written as a *block
classifier* (``blocks`` + ``head``) are such a chain already; any other model is
traced with torch.fx and cut after modules whose output is the only value the rest of
the graph reads.  A submodule whose code torch.fx cannot trace (control flow on a
tensor, ``int()`` of a shape, e.g. the TF-style padding of ``transformers``'
MobileNetV2 or the channel check of its ConvNeXt embeddings) is kept whole as one
call in the graph (a *leaf*), so the stages around it can still be cut
(``transformers`` models that their own fx tracer supports are traced with it first).

Example:
    >>> cuts = find_cuts(model)                  # {"layer1": 12, "layer2": 20, ...}
    >>> pieces = split(trace(model), [cuts["layer1"], cuts["layer2"]])
    >>> x = pieces[2](pieces[1](pieces[0](x)))   # == model(x)
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch import nn

from slimtune.spaces._attention import attention_blocks
from slimtune.spaces._hf_trace import hf_trace as _hf_trace

__all__ = ["TraceFailure", "auto_cut_names", "find_cuts", "is_head_of_blocks", "reproduces", "split", "trace",
           "trace_with_leaves", "why_not_a_cut"]


class TraceFailure(RuntimeError):
    """The model cannot be traced into a graph (the reason is the message)."""


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _extends_a_torch_layer(m: nn.Module) -> bool:
    """A subclass of a torch.nn layer (e.g. ``transformers``' ConvNextLayerNorm, an
    ``nn.LayerNorm``): traced through, its parent's forward would be recorded with
    the layer's attributes as constants (``normalized_shape``), which channel pruning
    later changes; kept whole, the layer reads them when it runs."""
    if isinstance(m, _CONTAINERS):
        return False
    return any(base.__module__.startswith("torch.nn.") and base is not nn.Module for base in type(m).__mro__[1:])


class _KnownProxy(torch.fx.Proxy):
    """The model's input or a parameter while tracing: its ``dtype`` is known (a
    forward that compares them, e.g. ``transformers``' ViT casting its pixels to its
    weights' dtype, then traces)."""

    def __getattr__(self, k: str) -> Any:
        if k == "dtype":
            if self.node.op == "placeholder":
                return self.tracer.input_dtype  # type: ignore[attr-defined]
            owner, _, leaf = str(self.node.target).rpartition(".")
            module = self.tracer.root.get_submodule(owner)  # type: ignore[attr-defined]
            value = module._parameters.get(leaf, module._buffers.get(leaf, module.__dict__.get(leaf)))
            if isinstance(value, torch.Tensor):
                return value.dtype
        return super().__getattr__(k)


class _LeafTracer(torch.fx.Tracer):
    """A torch.fx tracer that keeps the modules of ``leaf_types``, attention modules
    and subclasses of torch.nn layers whole (one ``call_module`` node), runs an
    ``nn.TransformerEncoder`` given no mask as its layers one by one (so that exits can
    go between them), and remembers the innermost module whose forward failed."""

    def __init__(self, leaf_types: set[type], input_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.input_dtype = input_dtype
        self.failed: tuple[type, str, BaseException] | None = None

    def trace(self, root: Any, concrete_args: Any = None) -> torch.fx.Graph:
        self.attention_types = attention_blocks(root) if isinstance(root, nn.Module) else ()
        return super().trace(root, concrete_args)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _KnownProxy(node, self) if node.op in ("placeholder", "get_attr") else super().proxy(node)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m) is nn.TransformerEncoder:
            return False
        return (type(m) in self.leaf_types or isinstance(m, self.attention_types) or _extends_a_torch_layer(m)
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            if type(m) is nn.TransformerEncoder and _no_masks(args, kwargs):
                x = args[0]
                for layer in m.layers:
                    x = self.call_module(layer, layer.forward, (x,), {})
                return self.call_module(m.norm, m.norm.forward, (x,), {}) if m.norm is not None else x
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if self.failed is None:  # the innermost module sees the error first
                self.failed = (type(m), self.path_of_module(m), exc)
            raise


def _no_masks(args: tuple, kwargs: dict) -> bool:
    """An ``nn.TransformerEncoder`` called on its input alone (no mask, not causal):
    then it is its layers one after another, then its norm."""
    return len(args) == 1 and all(v is None or v is False for v in kwargs.values())


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def trace_with_leaves(model: nn.Module, max_leaf_types: int = 32,
                      input_dtype: torch.dtype = torch.float32) -> tuple[torch.fx.GraphModule, list[str]]:
    """``model`` as an fx graph where every module class whose forward torch.fx
    cannot trace is kept whole (a leaf; all modules of that class, since they run
    the same code): trace, and on a failure inside a submodule make its class a leaf
    and trace again.  Returns the graph and the leaf class names.

    Raises:
        TraceFailure: the model's own forward (outside any submodule) cannot be
            traced, or more than ``max_leaf_types`` classes fail (``0``: plain
            torch.fx, but subclasses of torch.nn layers are kept whole).
    """
    leaves: set[type] = set()
    while True:
        tracer = _LeafTracer(leaves, input_dtype)
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - data-dependent control flow, custom ops, ...
            failed = tracer.failed
            if failed is None or failed[0] in leaves or failed[0] is type(model) or len(leaves) >= max_leaf_types:
                raise TraceFailure(_first_line(exc, 200)) from None
            leaves.add(failed[0])
            continue
        name = model.__class__.__name__ if isinstance(model, nn.Module) else "Traced"
        return torch.fx.GraphModule(tracer.root, graph, name), sorted(t.__name__ for t in leaves)


def trace(model: nn.Module, input_dtype: torch.dtype | None = None) -> torch.fx.GraphModule:
    """``model`` as an fx graph (sharing its modules and parameters).

    In this order: torch.fx as it is; for a ``transformers`` model, their own fx
    tracer (as before, so that stored exit models keep their ``state_dict`` keys);
    torch.fx with the submodules it cannot trace kept whole (see
    :func:`trace_with_leaves`).  ``input_dtype`` is the input's dtype where the forward
    reads it (default: int64 for a model with an ``nn.Embedding``, else float32).

    Raises:
        TraceFailure: none of these can trace it (the model's own forward cannot be).
    """
    if input_dtype is None:
        input_dtype = torch.int64 if any(isinstance(m, nn.Embedding) for m in model.modules()) else torch.float32
    try:
        return trace_with_leaves(model, max_leaf_types=0, input_dtype=input_dtype)[0]
    except TraceFailure:
        pass  # plain torch.fx failed: transformers' tracer, then leaves
    try:
        traced = _hf_trace(model)
    except Exception as exc:  # noqa: BLE001
        hf_failure = f"; transformers' tracer: {_first_line(exc)}"
        traced = None
    else:
        hf_failure = ""
    if traced is not None:
        return traced
    try:
        return trace_with_leaves(model, input_dtype=input_dtype)[0]
    except TraceFailure as exc:
        raise TraceFailure(f"torch.fx cannot trace the model ({(str(exc) + hf_failure)[:200]})") from None


def reproduces(model: nn.Module, pieces: list[nn.Module], example_input: torch.Tensor) -> bool:
    """Whether running ``pieces`` one after another gives exactly ``model``'s output
    on ``example_input`` (both in eval mode, without gradients)."""
    modes = [(m, m.training) for m in (model, *pieces)]
    try:
        with torch.no_grad():
            for module, _ in modes:
                module.eval()
            expected = model(example_input)
            x = example_input
            for piece in pieces:
                x = piece(x)
        return isinstance(x, torch.Tensor) and isinstance(expected, torch.Tensor) and torch.equal(x, expected)
    finally:
        for module, mode in modes:
            module.train(mode)


def _owner(node: torch.fx.Node) -> str | None:
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    return None


def _single_tensor_cuts(graph: torch.fx.Graph) -> set[int]:
    """Positions ``i`` after which the only value still needed is node ``i``'s output
    (parameters fetched by ``get_attr`` are re-fetched, so they do not count)."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    live: set[torch.fx.Node] = set()
    cuts: set[int] = set()
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        if node.op != "get_attr":
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if node.op in ("call_module", "call_function", "call_method") and live == {node}:
            cuts.add(i)
    return cuts


def _takes_an_item(node: torch.fx.Node, source: torch.fx.Node) -> bool:
    """Whether ``node`` is ``source[i]`` (an item of what a module returned)."""
    return node.op == "call_function" and node.target is operator.getitem and node.args[:1] == (source,)


def find_cuts(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """``{module name: graph position}`` for every submodule after which a single
    tensor flows: the last node that uses the module (or anything under it) is
    followed only by computation on that node's output."""
    nodes = list(graph_module.graph.nodes)
    cuts = _single_tensor_cuts(graph_module.graph)
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        owner = _owner(node)
        if owner is None:
            continue
        parts = owner.split(".")
        for depth in range(1, len(parts) + 1):
            last[".".join(parts[:depth])] = i
    out = {}
    for name, position in last.items():
        # the module's output may be followed by parameter-free ops (an activation)
        # before the next module: cut at the first single-tensor point before it
        # (a module returning a tuple, e.g. a transformers layer, is followed by the item taken from it)
        end = position
        while end < len(nodes) - 1 and (end not in cuts or _takes_an_item(nodes[end + 1], nodes[end])) \
                and _owner(nodes[end + 1]) is None and nodes[end + 1].op != "output" and len(nodes[end].users) == 1:
            end += 1
        if end in cuts:
            out[name] = end
    return out


def auto_cut_names(graph_module: torch.fx.GraphModule, cuts: dict[str, int], max_points: int = 4) -> list[str]:
    """Exit points chosen automatically among ``cuts`` (see :func:`find_cuts`).

    A useful exit has computation before it and enough after it: at least one
    weighted module (a conv or linear layer, i.e. a module holding a weight of two or
    more dimensions, counted whole for a leaf; normalization layers do not count)
    before the cut and two after (more than the final classifier).
    Candidates come in groups: the numbered children of one container (``stages.0``,
    ``stages.1``, ...), or the model's top-level children; of candidates with no
    weighted module between them (a layer, its norm and its activation) the last is kept.  The group that cuts the
    model into the most substantial pieces (two or more weighted modules) wins
    (ties: more cuts, then the shallower group); at most ``max_points``, evenly spread
    (the middle of each of ``max_points`` equal runs of candidates).
    """
    nodes = list(graph_module.graph.nodes)
    modules = dict(graph_module.named_modules())
    weighted = [i for i, n in enumerate(nodes) if n.op == "call_module"
                and any(p.dim() >= 2 for p in modules[str(n.target)].parameters())]

    def useful(name: str) -> bool:
        position = cuts[name]
        return sum(i <= position for i in weighted) >= 1 and sum(i > position for i in weighted) >= 2

    groups: dict[str, list[str]] = {}
    for name in cuts:
        if not useful(name):
            continue
        parent, _, leaf = name.rpartition(".")
        if leaf.isdigit():
            groups.setdefault(parent, []).append(name)
        if "." not in name:
            groups.setdefault("<top>", []).append(name)
    best: list[str] = []
    best_key = None
    for parent, names in groups.items():
        unique = list({cuts[n]: n for n in sorted(names, key=lambda n: cuts[n])}.values())
        # of cuts with no weighted module between them (a layer, its norm, its activation) keep the last
        unique = [n for n, after in zip(unique, [*unique[1:], None])
                  if after is None or any(cuts[n] < i <= cuts[after] for i in weighted)]
        depth = 0 if parent == "<top>" else parent.count(".") + 1 + (parent != "")
        bounds = [-1, *(cuts[n] for n in unique), len(nodes)]
        chunks = [sum(lo < i <= hi for i in weighted) for lo, hi in zip(bounds, bounds[1:])]
        key = (sum(c >= 2 for c in chunks), len(unique), -depth)  # substantial pieces first
        if best_key is None or key > best_key:
            best, best_key = unique, key
    if len(best) > max_points:
        step = len(best) / max_points
        best = [best[int((i + 0.5) * step)] for i in range(max_points)]
    return sorted(best, key=lambda n: cuts[n])


class Piece(torch.fx.GraphModule):
    """A piece of a traced model.  A failing call raises without torch.fx's printout of
    the generated code on stderr: code that probes models (e.g. tracing them again to
    find BatchNorms to fold, which a piece traced by ``transformers``' tracer refuses)
    gets the error alone."""

    def recompile(self) -> Any:
        out = super().recompile()
        type(self).__call__ = nn.Module.__call__  # recompile wraps __call__ to print; unwrap it
        return out


def split(graph_module: torch.fx.GraphModule, positions: list[int]) -> list[torch.fx.GraphModule]:
    """The graph cut after each of ``positions`` (from :func:`find_cuts`): pieces
    sharing the traced model's modules; ``pieces[k+1]`` takes ``pieces[k]``'s output."""
    nodes = list(graph_module.graph.nodes)
    bounds = sorted(set(positions))
    pieces = []
    start = 0
    carried: torch.fx.Node | None = None
    for end in [*bounds, len(nodes) - 1]:
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        if carried is not None:
            env[carried] = graph.placeholder("x")
        final = end == len(nodes) - 1
        for node in nodes[start:end + 1] if not final else nodes[start:]:
            if node.op == "output":
                graph.output(env[node.args[0]] if isinstance(node.args[0], torch.fx.Node) else
                             torch.fx.map_arg(node.args[0], lambda n: env[n]))
                continue
            if node.op == "placeholder" and carried is not None:
                continue
            env[node] = graph.node_copy(node, lambda n: _fetch(n, env, graph))
        if not final:
            graph.output(env[nodes[end]])
        pieces.append(Piece(graph_module, graph, class_name=f"Piece{len(pieces)}"))
        carried = nodes[end]
        start = end + 1
    return pieces


def _fetch(node: torch.fx.Node, env: dict, graph: torch.fx.Graph) -> Any:
    """A node from an earlier piece: only parameters (get_attr) may be, re-fetched."""
    if node in env:
        return env[node]
    if node.op == "get_attr":
        env[node] = graph.get_attr(node.target)
        return env[node]
    raise ValueError(f"The graph cannot be cut there: {node.name} is needed on both sides.")


def is_head_of_blocks(model: nn.Module) -> bool:
    """Whether ``model``'s forward is exactly ``head(blocks(x))`` (read from its torch.fx
    graph with ``blocks`` and ``head`` kept whole)."""
    from slimtune.tasks._models import BlockClassifier

    if type(model).forward is BlockClassifier.forward:
        return True
    whole = (model.blocks, model.head)

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return any(m is w for w in whole) or super().is_leaf_module(m, module_qualified_name)

    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - control flow, custom ops: not a plain chain
        return False
    nodes = list(graph.nodes)
    if [(n.op, str(n.target)) for n in nodes[1:]] != [("call_module", "blocks"), ("call_module", "head"),
                                                      ("output", "output")] or nodes[0].op != "placeholder":
        return False
    return nodes[1].args == (nodes[0],) and nodes[2].args == (nodes[1],) and nodes[3].args == (nodes[2],)


def why_not_a_cut(graph: torch.fx.GraphModule, key: str, prefix: str) -> str:
    """Why the model cannot stop after the module ``key`` (not in the cuts of ``graph``)."""
    called = {str(n.target) for n in graph.graph.nodes if n.op in ("call_module", "get_attr")}
    if not any(t == key or t.startswith(key + ".") for t in called):
        whole = next((t for t in sorted(called, key=len) if key.startswith(t + ".")), None)
        if whole is not None:
            return (f"it runs inside {prefix + whole!r}, which the trace keeps whole (its forward cannot be traced, "
                    "or it is a torch.nn layer), so the model cannot stop after it; name that module or one outside it.")
        return "the model's forward never calls it, so the model cannot stop after it."
    return ("more than one value flows past it (e.g. a residual or a skip connection, or a mask every layer reads), "
            "so the model cannot stop there.")
