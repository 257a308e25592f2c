"""One declarative export spec per graph (the single place that says what is exported).

Each :class:`GraphSpec` names the graph's inputs and outputs (symbolic shapes), which axes are
dynamic, the ONNX opset, the parity tolerance against PyTorch, the sizes the parity check runs at,
a dummy-input generator, the wrapper module that maps a :class:`JointModel` method onto the
graph's inputs and outputs (the reference every export is compared with), the module that is
exported (the same computation in operators phone accelerators take, ``graphs.py``) and the fixed
sizes of the graph's mobile variant. ``GRAPHS`` holds all three specs; nothing registers itself elsewhere.

Symbolic dims: ``batch`` / ``length`` / ``n`` are dynamic; ``D`` (embedding dim), ``T`` (image tokens),
``Dt`` (token dim), ``S`` (image side), ``J`` (text states the cross-encoder reuses: the inputs of its
joint blocks, then the final states) and ``W`` (text width) are fixed by the model config; integers are
literal. The text encoder returns the query's states with its embedding, so a reranked search runs the
text blocks once: the cross-encoder graph starts from those states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .graphs import CrossGraph, ImageGraph, TextGraph

if TYPE_CHECKING:
    from edge_xmr.config import ModelConfig
    from edge_xmr.model import JointModel

Dim = str | int
Inputs = dict[str, npt.NDArray[Any]]

DYNAMIC_DIMS = ("batch", "length", "n")  # symbolic dims left free in the exported graphs
MAX_BATCH = 256  # texts / images per call the runtime may send (CoreML needs a bound; ONNX has none)
MAX_CANDIDATES = 1024  # candidates per cross-encoder call (the runtime chunks longer lists)
MOBILE_TEXT_LEN = 32  # tokens of the mobile variants (capped at max_text_len; shorter texts padded, mask 0)
MOBILE_CANDIDATES = 20  # candidates per call of the mobile cross_encoder (fewer: padded; more: chunked)
OPSET = 17  # LayerNormalization is a native op from 17; ORT fusions and the mobile checkers know it


@dataclass(frozen=True)
class TensorSpec:
    name: str  # graph input/output name (fixed by docs/bundle.md)
    dtype: str  # numpy dtype name: "int64" or "float32"
    shape: tuple[Dim, ...]  # symbolic shape, see the module docstring


@dataclass(frozen=True)
class GraphSpec:
    name: str  # graph name = file stem in the bundle
    inputs: tuple[TensorSpec, ...]  # in the order the graph takes them
    outputs: tuple[TensorSpec, ...]  # in the order the wrapper returns them
    wrapper: Callable[[JointModel], nn.Module]  # JointModel -> its method with the graph's signature (reference)
    graph: Callable[[JointModel], nn.Module]  # JointModel -> the module exported (graphs.py), same signature
    dummy: Callable[[ModelConfig, dict[str, int], np.random.Generator], Inputs]  # sizes -> inputs
    export_sizes: dict[str, int]  # dynamic-dim sizes traced at export (>= 2, so none is specialised)
    parity_sizes: tuple[dict[str, int], ...]  # dynamic-dim sizes the fp32 parity check runs at
    mobile_sizes: dict[str, int]  # dynamic-dim sizes of the fixed-shape mobile variant (inputs padded to them)
    opset: int = OPSET  # ONNX opset
    atol: float = 1e-4  # max abs diff ONNX fp32 vs PyTorch on every output
    fusion: Literal["never", "measure", "ship"] = "never"  # onnxruntime transformer fusions: "never"; "measure" (fuse, check and time
    # them, ship the plain graph); "ship" (ship the fused graph). Decided from measurements, see docs/export.md
    int8_weight_only: str | None = None  # regex of MatMul/Gemm nodes kept float-compute in int8

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export`` dynamic axes: {tensor: {axis: symbolic name}}."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if d in DYNAMIC_DIMS}
                for t in self.inputs + self.outputs
                if any(d in DYNAMIC_DIMS for d in t.shape)}

    def concrete_shape(self, t: TensorSpec, cfg: ModelConfig) -> list[Dim]:
        """Shape with config dims filled in; dynamic dims stay symbolic (strings)."""
        fixed = fixed_dims(cfg)
        return [fixed.get(d, d) if isinstance(d, str) else d for d in t.shape]

    def io(self, cfg: ModelConfig) -> dict[str, list[dict[str, Any]]]:
        """The manifest's description of the graph's inputs and outputs."""
        def one(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "dtype": t.dtype, "shape": self.concrete_shape(t, cfg)}

        return {"inputs": [one(t) for t in self.inputs], "outputs": [one(t) for t in self.outputs]}

    def fixed_sizes(self, cfg: ModelConfig) -> dict[str, int]:
        """The mobile variant's sizes for ``cfg`` (text length capped at ``max_text_len``)."""
        return {d: min(v, cfg.max_text_len) if d == "length" else v for d, v in self.mobile_sizes.items()}

    def dim_ranges(self, cfg: ModelConfig) -> dict[str, tuple[int, int]]:
        """Allowed [lower, upper] of every dynamic dim (the manifest's and CoreML's shape ranges)."""
        return {"batch": (1, MAX_BATCH), "n": (1, MAX_CANDIDATES), "length": (1, cfg.max_text_len)}


def fixed_dims(cfg: ModelConfig) -> dict[str, int]:
    return {"D": cfg.embed_dim, "T": cfg.n_image_tokens, "Dt": cfg.token_dim, "S": cfg.image.size,
            "J": cfg.cross_layers + 1, "W": cfg.text.width}


# ---- wrappers: JointModel methods with the graphs' exact signatures -------------------------------
class TextEncoder(nn.Module):
    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.query_states(input_ids, attention_mask)  # (batch, D), (J, batch, length, W)


class ImageEncoder(nn.Module):
    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(pixel_values)  # (batch, D), (batch, T, Dt)


class CrossEncoder(nn.Module):
    def __init__(self, model: JointModel):
        super().__init__()
        self.model = model

    def forward(self, text_states: torch.Tensor, attention_mask: torch.Tensor, text_embeds: torch.Tensor,
                image_tokens: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        from edge_xmr.model.joint import EncodedQuery

        q = EncodedQuery(t_emb=text_embeds, states=list(text_states.unbind(0)), mask=attention_mask)
        return self.model.score_terms(q, image_tokens[None], image_embeds[None], ("joint",))["joint"][0]  # (n,)


# ---- dummy inputs ---------------------------------------------------------------------------------
def _text(cfg: ModelConfig, batch: int, length: int, rng: np.random.Generator) -> Inputs:
    """Random ids with [CLS]-like first / [SEP]-like last token; rows after the first are padded."""
    V = cfg.text.vocab_size
    ids = rng.integers(5, V, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), np.int64)
    for i in range(1, batch):
        n = max(1, length - (i * 3) % length)  # real tokens in row i
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def dummy_text(cfg: ModelConfig, sizes: dict[str, int], rng: np.random.Generator) -> Inputs:
    return _text(cfg, sizes["batch"], sizes["length"], rng)


def dummy_image(cfg: ModelConfig, sizes: dict[str, int], rng: np.random.Generator) -> Inputs:
    S = cfg.image.size
    return {"pixel_values": rng.standard_normal((sizes["batch"], 3, S, S)).astype(np.float32)}


def dummy_cross(cfg: ModelConfig, sizes: dict[str, int], rng: np.random.Generator) -> Inputs:
    n, L = sizes["n"], sizes["length"]
    J, W = cfg.cross_layers + 1, cfg.text.width
    out = {"text_states": rng.standard_normal((J, 1, L, W)).astype(np.float32),
           "attention_mask": np.ones((1, L), np.int64),
           "text_embeds": _unit(rng.standard_normal((1, cfg.embed_dim)).astype(np.float32))}
    out["image_tokens"] = rng.standard_normal((n, cfg.n_image_tokens, cfg.token_dim)).astype(np.float32)
    out["image_embeds"] = _unit(rng.standard_normal((n, cfg.embed_dim)).astype(np.float32))
    return out


_IDS = TensorSpec("input_ids", "int64", ("batch", "length"))
_MASK = TensorSpec("attention_mask", "int64", ("batch", "length"))
_QMASK = TensorSpec("attention_mask", "int64", (1, "length"))

GRAPHS: dict[str, GraphSpec] = {
    "text_encoder": GraphSpec(
        name="text_encoder",
        inputs=(_IDS, _MASK),
        outputs=(TensorSpec("text_embeds", "float32", ("batch", "D")),
                 TensorSpec("text_states", "float32", ("J", "batch", "length", "W"))),
        wrapper=TextEncoder,
        graph=TextGraph,
        dummy=dummy_text,
        export_sizes={"batch": 2, "length": 7},
        parity_sizes=({"batch": 1, "length": 1}, {"batch": 1, "length": 9}, {"batch": 3, "length": 5},
                      {"batch": 8, "length": 16}),
        mobile_sizes={"batch": 1, "length": MOBILE_TEXT_LEN},
        fusion="measure",  # measured 0.93-1.08x (noise) on the lite model: plain graph shipped
    ),
    "image_encoder": GraphSpec(
        name="image_encoder",
        inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, "S", "S")),),
        outputs=(TensorSpec("image_embeds", "float32", ("batch", "D")),
                 TensorSpec("image_tokens", "float32", ("batch", "T", "Dt"))),
        wrapper=ImageEncoder,
        graph=ImageGraph,
        dummy=dummy_image,
        export_sizes={"batch": 2},
        parity_sizes=({"batch": 1}, {"batch": 3}),
        mobile_sizes={"batch": 1},
        int8_weight_only=".",  # stored photo data must not depend on the batch (cheap: convs dominate)
    ),
    "cross_encoder": GraphSpec(
        name="cross_encoder",
        inputs=(TensorSpec("text_states", "float32", ("J", 1, "length", "W")), _QMASK,
                TensorSpec("text_embeds", "float32", (1, "D")),
                TensorSpec("image_tokens", "float32", ("n", "T", "Dt")),
                TensorSpec("image_embeds", "float32", ("n", "D"))),
        outputs=(TensorSpec("joint", "float32", ("n",)),),  # the joint pass's term of the score (unweighted)
        wrapper=CrossEncoder,
        graph=CrossGraph,
        dummy=dummy_cross,
        export_sizes={"n": 3, "length": 7},
        parity_sizes=({"n": 1, "length": 1}, {"n": 1, "length": 12}, {"n": 5, "length": 4},
                      {"n": 17, "length": 16}),
        mobile_sizes={"n": MOBILE_CANDIDATES, "length": MOBILE_TEXT_LEN},
        fusion="measure",  # measured 0.90-0.98x on the lite model: plain graph shipped
    ),
}
