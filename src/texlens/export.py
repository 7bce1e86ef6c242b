"""ONNX export of a model directory, and an adapter that runs the exported graphs under ``texlens.decoding``.

A model is cut into three graphs that mirror its decoding interface:

- ``encoder.onnx``: images (B, 1, H, W) -> memory (B, S, D); batch, H and W dynamic.
- ``decoder_init.onnx``: memory -> the decoder state before the first token (for the Transformer the
  cross-attention keys/values of every layer, computed once, and empty self-attention caches; for the
  CNN-RNN the first hidden state and the projected memory).
- ``decoder.onnx``: one step, (token, state) -> (logits, new state, attention); batch, prefix length and
  memory length dynamic. The state is the model's own ``init_state`` dict flattened leaf by leaf (names in
  ``onnx.json``), so the same export serves every model that follows the ``ImageToLatex`` contract.

``OnnxModel`` exposes ``encode/init_state/step/reorder_state/feature_shape`` over onnxruntime, so greedy and
beam search run unchanged on either backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel", "ensure_onnx", "export_onnx"]

OPSET = 17
EXPORT_VERSION = 4  # part of the cache key: a change to how graphs are exported invalidates cached exports
ENCODER, INIT, DECODER = "encoder", "decoder_init", "decoder"
META_FILE = "onnx.json"
# Largest |torch - onnxruntime| logit difference accepted by the check that runs after every export.
TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------
# Decoder state <-> flat list of tensors
# --------------------------------------------------------------------------------------------------


def flatten_state(state: Any, prefix: str = "") -> tuple[list[str], list[Any], Any]:
    """Leaves of a nested dict/list state with dotted names, and a spec that ``unflatten_state`` rebuilds it from."""
    if isinstance(state, dict):
        names, leaves, spec = [], [], {}
        for key, value in state.items():
            n, leaf, spec[key] = flatten_state(value, f"{prefix}{key}.")
            names += n
            leaves += leaf
        return names, leaves, {"dict": spec}
    if isinstance(state, (list, tuple)):
        names, leaves, spec = [], [], []
        for i, value in enumerate(state):
            n, leaf, s = flatten_state(value, f"{prefix}{i}.")
            names += n
            leaves += leaf
            spec.append(s)
        return names, leaves, {"list": spec}
    if isinstance(state, torch.Tensor) or isinstance(state, int):
        return [prefix.rstrip(".")], [state], {"leaf": "int" if isinstance(state, int) else "tensor"}
    raise TypeError(f"cannot export a decoder state holding a {type(state).__name__} ({prefix.rstrip('.')})")


def unflatten_state(spec: Any, leaves: list[Any]) -> Any:
    """Rebuild a state from its spec and leaves (in ``flatten_state`` order)."""
    it = iter(leaves)

    def build(s: Any) -> Any:
        if "dict" in s:
            return {k: build(v) for k, v in s["dict"].items()}
        if "list" in s:
            return [build(v) for v in s["list"]]
        return next(it)

    return build(spec)


# --------------------------------------------------------------------------------------------------
# Graph wrappers: plain modules over the model's own methods
# --------------------------------------------------------------------------------------------------


class _Encode(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)


class _InitState(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = flatten_state(self.model.init_state(memory))[1]
        # Outputs are tensors; an int leaf (a step counter) becomes a 0-d int64 tensor. An output that is the
        # input itself (the CNN-RNN keeps the memory in its state) is copied: ONNX outputs need their own node.
        return tuple(
            torch.tensor(x, dtype=torch.int64) if isinstance(x, int) else (x.clone() if x is memory else x)
            for x in leaves
        )


class _Step(nn.Module):
    def __init__(self, model: nn.Module, spec: Any, changing: list[int]):
        super().__init__()
        self.model = model
        self.spec = spec
        self.changing = (
            changing  # leaves a step replaces; the rest (cross-attention K/V, memory) pass through
        )

    def forward(self, tokens: torch.Tensor, *leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, state, attention = self.model.step(tokens, unflatten_state(self.spec, list(leaves)))
        new = flatten_state(state)[1]
        return (logits, attention, *(new[i] for i in self.changing))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _probe(
    model: nn.Module, batch: int, height: int, width: int, steps: int, group: int = 1
) -> tuple[torch.Tensor, Any]:
    """(memory, state after ``steps`` tokens) for random images of one size, ``group`` hypotheses per image."""
    gen = torch.Generator().manual_seed(batch * 1000 + width)
    images = (torch.rand(batch, 1, height, width, generator=gen) > 0.8).float()
    memory = model.encode(images)
    state = model.init_state(memory)
    if group > 1:
        state = model.reorder_state(state, torch.arange(batch).repeat_interleave(group))
    tokens = torch.full((batch * group,), 1, dtype=torch.long)
    for _ in range(steps):
        logits, state, _ = model.step(tokens, state)
        tokens = logits.argmax(-1)
    return memory, state


def _dynamic_dims(shapes: list[tuple[int, ...]]) -> list[int]:
    """Dimensions whose size differs between probes of different batch, image size and prefix length."""
    return [d for d in range(len(shapes[0])) if len({s[d] for s in shapes}) > 1]


def _feature_stride(model: nn.Module) -> tuple[int, int]:
    """Total (height, width) stride of the encoder, checked against ``model.feature_shape`` on many sizes."""
    big = 4096
    h, w = model.feature_shape(big, big)
    stride = (big // h, big // w)
    for n in range(16, 1040, 7):
        expected = (-(-n // stride[0]), -(-n // stride[1]))
        if tuple(model.feature_shape(n, n)) != expected:
            raise ValueError(f"feature_shape({n}, {n}) is not ceil(n / stride) for stride {stride}")
    return stride


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict
) -> None:
    """torch.onnx.export with the TorchScript tracer (no onnxscript dependency), opset 17."""
    # The exporter restores the wrapper's training flag afterwards, recursively: a new module is in training
    # mode, which would switch the model's dropout on.
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: the check after export decides
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def fold_reshapes(path: Path, probes: list[dict[str, np.ndarray]]) -> int:
    """Give the graph's Reshape nodes constant target shapes (0 = keep that input dim); returns how many.

    The tracer computes every reshape target from the tensor's runtime shape (Shape, Slice, Concat, ... per call):
    at one token per step that bookkeeping is a third of the decoder's operators. Running the graph on ``probes``
    (feeds that differ in every dynamic size) shows which output dim copies which input dim and which is fixed;
    the dead shape arithmetic is then dropped. A target with more than one size known only at run time (the
    queries of g hypotheses per image regrouped by image: (g*B, 1, D) -> (B, g, D)) takes the sizes it can from the
    graph's inputs instead (B is the batch of the cross-attention keys), one shared Shape per input dim.
    ``check_export`` afterwards compares the result with PyTorch.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    typed = onnx.shape_inference.infer_shapes(graph_model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input, *typed.output)}
    reshapes = [n for n in graph_model.graph.node if n.op_type == "Reshape"]
    if not reshapes:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(graph_model)
    watched = list(dict.fromkeys(t for n in reshapes for t in (n.input[0], n.output[0])))
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, types[t], None) for t in watched if t not in outputs
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    seen = [dict(zip(names, (np.shape(x) for x in session.run(None, f)), strict=True)) for f in probes]
    graph_inputs = [i.name for i in graph_model.graph.input if i.name in probes[0]]
    # (input, dim) -> its Shape node's output; a target pattern -> its Concat's output.
    shared: dict[Any, str] = {}
    prologue: list[Any] = []  # nodes for those, placed first (they read graph inputs and constants only)

    def input_dim(sizes: list[int]) -> tuple[str, int] | None:
        """The first graph input dimension that has these sizes in every probe."""
        for name in graph_inputs:
            shapes = [np.shape(f[name]) for f in probes]
            for d in range(len(shapes[0])):
                if all(len(sh) > d and sh[d] == n for sh, n in zip(shapes, sizes, strict=True)):
                    return name, d
        return None

    def shape_tensor(target: list[Any]) -> str:
        """A tensor holding ``target``: ints as constants, (input, dim) pairs read at run time."""
        key = tuple(target)
        if key in shared:
            return shared[key]
        pieces = []
        for part in target:
            if isinstance(part, tuple):
                if part not in shared:
                    shared[part] = f"{part[0]}/dim{part[1]}"
                    prologue.append(
                        helper.make_node("Shape", [part[0]], [shared[part]], start=part[1], end=part[1] + 1)
                    )
                pieces.append(shared[part])
            else:
                const = f"fold_shape/const{len(graph_model.graph.initializer)}"
                graph_model.graph.initializer.append(
                    numpy_helper.from_array(np.array([part], np.int64), const)
                )
                pieces.append(const)
        shared[key] = f"fold_shape/target{len(shared)}"
        prologue.append(helper.make_node("Concat", pieces, [shared[key]], axis=0))
        return shared[key]

    folded = 0
    for node in reshapes:
        ins, outs = [p[node.input[0]] for p in seen], [p[node.output[0]] for p in seen]
        target = []
        for i in range(len(outs[0])):
            copies = all(len(a) > i and a[i] == o[i] for a, o in zip(ins, outs, strict=True))
            fixed = len({o[i] for o in outs}) == 1
            if copies and (not fixed or len({a[i] for a in ins}) > 1):
                target.append(0)  # follows the input's dim i
            elif fixed and outs[0][i] > 0:
                target.append(outs[0][i])
            elif copies:
                target.append(0)
            else:
                target.append(-1)  # whatever is left
        if target.count(-1) > 1:
            for i in range(len(target)):  # from the left, until one size is left to -1
                found = input_dim([o[i] for o in outs]) if target[i] == -1 else None
                if found is not None and target.count(-1) > 1:
                    target[i] = found
        if target.count(-1) > 1:
            continue
        if any(isinstance(part, tuple) for part in target):
            node.input[1] = shape_tensor(target)
        else:
            name = f"{node.output[0]}/folded_shape"
            graph_model.graph.initializer.append(
                numpy_helper.from_array(np.array(target, dtype=np.int64), name)
            )
            node.input[1] = name
        folded += 1
    # Drop what no output needs any more (the shape arithmetic).
    needed = {o.name for o in graph_model.graph.output}
    kept = []
    for node in reversed([*prologue, *graph_model.graph.node]):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph_model.graph.node[:]
    graph_model.graph.node.extend(reversed(kept))
    used = {i for n in kept for i in n.input}
    initializers = [t for t in graph_model.graph.initializer if t.name in used]
    del graph_model.graph.initializer[:]
    graph_model.graph.initializer.extend(initializers)
    onnx.save(graph_model, str(path))
    return folded


def _as_tensors(leaves: list[Any]) -> list[torch.Tensor]:
    """State leaves as tensors: an int leaf (a step counter) becomes a 0-d int64 tensor."""
    return [torch.tensor(x, dtype=torch.int64) if isinstance(x, int) else x for x in leaves]


def _step_feeds(
    tokens: torch.Tensor, leaves: list[torch.Tensor], in_names: list[str]
) -> dict[str, np.ndarray]:
    feeds = {name: leaf.numpy() for name, leaf in zip(in_names, leaves, strict=True)}
    feeds["tokens"] = tokens.numpy()
    return feeds


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = False) -> dict[str, Path]:
    """Export a model directory to ONNX (encoder, decoder_init, decoder + config/vocab), check it, optionally int8."""
    from texlens.models import load_model
    from texlens.models.router import ROUTER_CONFIG, ROUTER_WEIGHTS, load_router

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, _ = load_model(model_dir)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.onnx" for name in (ENCODER, INIT, DECODER)}

    with torch.no_grad():
        # Two probes that differ in batch, image size and prefix length tell which state dims are dynamic.
        memory_a, state_a = _probe(model, 2, 32, 64, 2)
        _, state_b = _probe(model, 3, 48, 128, 3)
        names, leaves_a, spec = flatten_state(state_a)
        _, leaves_b, spec_b = flatten_state(state_b)
        if spec != spec_b:
            raise ValueError("the decoder state changes structure between steps; it cannot be exported")
        kinds = ["int" if isinstance(x, int) else "tensor" for x in leaves_a]
        step_tokens = torch.tensor([5, 6], dtype=torch.long)
        after = flatten_state(model.step(step_tokens, state_a)[1])[1]
        changing = [i for i, (old, new) in enumerate(zip(leaves_a, after, strict=True)) if new is not old]
        leaves_a, leaves_b = _as_tensors(leaves_a), _as_tensors(leaves_b)
        state_axes = {
            name: {d: f"{name}_{d}" for d in _dynamic_dims([tuple(a.shape), tuple(b.shape)])}
            for name, a, b in zip(names, leaves_a, leaves_b, strict=True)
        }
        in_names = [f"in.{n}" for n in names]
        out_names = [f"out.{n}" for n in names]

        _export(
            _Encode(model),
            (torch.rand(2, 1, 32, 64),),
            paths[ENCODER],
            ["images"],
            ["memory"],
            {"images": {0: "batch", 2: "height", 3: "width"}, "memory": {0: "batch", 1: "memory"}},
        )
        init_axes = {o: state_axes[n] for n, o in zip(names, out_names, strict=True)}
        _export(
            _InitState(model),
            (memory_a,),
            paths[INIT],
            ["memory"],
            out_names,
            {"memory": {0: "batch", 1: "memory"}, **init_axes},
        )
        step_axes = {"tokens": {0: "batch"}, "logits": {0: "batch"}, "attention": {0: "batch", 1: "memory"}}
        for n, i in zip(names, in_names, strict=True):
            step_axes[i] = state_axes[n]
        for k in changing:
            step_axes[out_names[k]] = {d: f"{label}_out" for d, label in state_axes[names[k]].items()}
        _export(
            _Step(model, spec, changing),
            (step_tokens, *leaves_a),
            paths[DECODER],
            ["tokens", *in_names],
            ["logits", "attention", *(out_names[k] for k in changing)],
            step_axes,
        )
        # Probes that differ in batch, hypotheses per image, memory length and prefix length (none of them 0)
        # for fold_reshapes.
        _, state_c = _probe(model, 1, 64, 256, 5)
        _, state_d = _probe(model, 2, 48, 96, 4, group=3)
        leaves_c, leaves_d = (_as_tensors(flatten_state(x)[1]) for x in (state_c, state_d))
        probes = [
            _step_feeds(torch.arange(rows, dtype=torch.long) + 5, leaves, in_names)
            for rows, leaves in ((2, leaves_a), (3, leaves_b), (1, leaves_c), (6, leaves_d))
        ]
        fold_reshapes(paths[DECODER], probes)

    meta = {
        "model": model.name,
        "opset": OPSET,
        "state": {"names": names, "kinds": kinds, "changing": [names[k] for k in changing]},
        "feature_stride": list(_feature_stride(model)),
        "export_version": EXPORT_VERSION,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for file in ("config.json", "vocab.json"):
        shutil.copyfile(model_dir / file, out_dir / file)
    result = {
        **paths,
        "config": out_dir / "config.json",
        "vocab": out_dir / "vocab.json",
        "meta": out_dir / META_FILE,
    }
    # The handwriting router (PyTorch, a few milliseconds per image) goes along, so an exported model reads
    # handwriting at its own glyph height as the original does.
    if load_router(model_dir) is not None:
        for key, file in (("router", ROUTER_WEIGHTS), ("router_config", ROUTER_CONFIG)):
            shutil.copyfile(model_dir / file, out_dir / file)
            result[key] = out_dir / file

    check_export(model, out_dir)
    if int8:
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        # quantize_dynamic logs a "consider pre-processing" warning on the root logger for every graph.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            for name in (ENCODER, INIT, DECODER):
                target = out_dir / f"{name}.int8.onnx"
                # MatMul/Gemm only: int8 convolutions (ConvInteger) run slower than float ones on CPU. A scale
                # per output channel keeps more of the accuracy than one per tensor, at the same speed.
                quantize_dynamic(
                    paths[name],
                    target,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    per_channel=True,
                )
                result[f"{name}_int8"] = target
        finally:
            root.setLevel(level)
    return result


def check_export(model: nn.Module, onnx_dir: Path, steps: int = 4) -> float:
    """Run torch and onnxruntime side by side on new batches/sizes/prefixes; raise if the logits differ."""
    onnx_model = OnnxModel(onnx_dir)
    worst = 0.0
    with torch.no_grad():
        # The last case decodes 3 hypotheses per image against one copy of its memory, as beam search does.
        for batch, height, width, group in ((3, 48, 96, 1), (1, 40, 200, 1), (2, 32, 160, 3)):
            generator = torch.Generator().manual_seed(7 + batch)
            images = (torch.rand(batch, 1, height, width, generator=generator) > 0.8).float()
            memory_t, memory_o = model.encode(images), onnx_model.encode(images)
            worst = max(worst, float((memory_t - memory_o).abs().max()))
            state_t, state_o = model.init_state(memory_t), onnx_model.init_state(memory_o)
            rows = torch.arange(batch).repeat_interleave(group)
            state_t, state_o = model.reorder_state(state_t, rows), onnx_model.reorder_state(state_o, rows)
            tokens = torch.arange(batch * group) + 5
            for _ in range(steps):
                logits_t, state_t, att_t = model.step(tokens, state_t)
                logits_o, state_o, att_o = onnx_model.step(tokens, state_o)
                diff = max(float((logits_t - logits_o).abs().max()), float((att_t - att_o).abs().max()))
                worst = max(worst, diff)
                tokens = logits_t.argmax(-1)
    if not worst <= TOLERANCE:
        raise RuntimeError(
            f"ONNX export of {onnx_dir} disagrees with PyTorch by {worst:.2e} (> {TOLERANCE}); "
            "the model's step probably uses Python values the tracer froze"
        )
    return worst


def ensure_onnx(model_dir: str | Path, int8: bool = False) -> Path:
    """``model_dir`` itself when it holds ONNX graphs, else an export of it cached under ~/.cache/texlens/onnx."""
    model_dir = Path(model_dir)
    suffix = ".int8.onnx" if int8 else ".onnx"
    if (model_dir / f"{DECODER}{suffix}").is_file():
        return model_dir
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        if (model_dir / f"{DECODER}.onnx").is_file():
            raise FileNotFoundError(
                f"{model_dir} has no int8 graphs; export them with `texlens export onnx --int8`"
            )
        raise FileNotFoundError(f"{model_dir} holds neither ONNX graphs nor model.safetensors")
    key = f"{model_dir.resolve()}:{weights.stat().st_mtime_ns}:{EXPORT_VERSION}"
    stamp = hashlib.sha1(key.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "texlens" / "onnx" / stamp
    if not (cache / f"{DECODER}{suffix}").is_file():
        export_onnx(model_dir, cache, int8=int8)
    return cache


# --------------------------------------------------------------------------------------------------
# Running the graphs
# --------------------------------------------------------------------------------------------------


class OnnxState:
    """Decoder state of ``OnnxModel``: the flat numpy leaves in ``onnx.json`` order."""

    def __init__(self, leaves: list[np.ndarray]):
        self.leaves = leaves


class OnnxModel:
    """The decoding interface of ``ImageToLatex`` (encode, init_state, step, reorder_state) over onnxruntime."""

    def __init__(self, onnx_dir: str | Path, int8: bool = False, num_threads: int | None = None):
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        meta = json.loads((onnx_dir / META_FILE).read_text(encoding="utf-8"))
        self.state_names: list[str] = meta["state"]["names"]
        self.feature_stride = tuple(meta["feature_stride"])
        self.config = json.loads((onnx_dir / "config.json").read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        # Follow torch's thread count (the decoding loop runs in torch too): one knob for both runtimes.
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        suffix = ".int8.onnx" if int8 else ".onnx"

        def session(name: str) -> Any:
            path = onnx_dir / f"{name}{suffix}"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing; run `texlens export onnx{' --int8' if int8 else ''}`"
                )
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        self.encoder, self.init, self.decoder = session(ENCODER), session(INIT), session(DECODER)
        self.in_names = [f"in.{n}" for n in self.state_names]
        self.changing = [self.state_names.index(n) for n in meta["state"]["changing"]]
        # Leaves no step changes: what depends on the image alone (the memory's cross-attention keys/values).
        self.static = frozenset(range(len(self.state_names))) - frozenset(self.changing)
        # Since export version 3 the static leaves hold one row per image however many hypotheses decode it.
        self.shared_static = meta.get("export_version", 2) >= 3
        self.out_names = ["logits", "attention", *(f"out.{self.state_names[k]}" for k in self.changing)]

    def eval(self) -> OnnxModel:
        """No-op, for code that calls ``model.eval()``."""
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> memory (B, S, D)."""
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.encoder.run(["memory"], {"images": array})[0])

    def init_state(self, memory: torch.Tensor) -> OnnxState:
        """Decoder state before the first token."""
        array = np.ascontiguousarray(memory.detach().cpu().numpy(), dtype=np.float32)
        return OnnxState(self.init.run(None, {"memory": array}))

    def step(self, tokens: torch.Tensor, state: OnnxState) -> tuple[torch.Tensor, OnnxState, torch.Tensor]:
        """Feed one token per row: (logits (B, V), new state, attention (B, S))."""
        feeds = dict(zip(self.in_names, state.leaves, strict=True))
        # np.asarray copies nothing when the tokens are int64 already (astype always copied).
        feeds["tokens"] = np.asarray(tokens.detach().cpu().numpy(), dtype=np.int64)
        logits, attention, *changed = self.decoder.run(self.out_names, feeds)
        leaves = list(state.leaves)
        for k, value in zip(self.changing, changed, strict=True):
            leaves[k] = value
        return torch.from_numpy(logits), OnnxState(leaves), torch.from_numpy(attention)

    def reorder_state(
        self, state: OnnxState, index: torch.Tensor, images: torch.Tensor | None = None
    ) -> OnnxState:
        """State of the hypothesis rows ``index``; ``images`` as in ``ImageToLatex.reorder_state``.

        The leaves no step changes (``static``) hold one row per image. 0-d leaves (the position counter) are
        shared. Graphs exported before version 3 keep a row per hypothesis everywhere: all leaves follow ``index``.
        """
        idx = index.detach().cpu().numpy()
        img = None if images is None else images.detach().cpu().numpy()
        leaves = []
        for k, leaf in enumerate(state.leaves):
            if leaf.ndim == 0:
                leaves.append(leaf)
            elif k in self.static and self.shared_static:
                leaves.append(leaf if img is None else np.ascontiguousarray(leaf[img]))
            else:
                leaves.append(np.ascontiguousarray(leaf[idx]))
        return OnnxState(leaves)

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the feature map for an image of ``height`` x ``width``."""
        sh, sw = self.feature_stride
        return -(-int(height) // sh), -(-int(width) // sw)
