"""Frozen configuration of the joint shared-weight model (torch-free).

A model directory holds ``config.json`` (this dataclass) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .score import ScoreConfig

Base = Literal["lite", "clip", "tiny"]
Preset = Literal["lite", "lite1", "lite2", "clip", "tiny"]  # preset names: lite1 / lite2 are base lite
# with EfficientNet-Lite1 / Lite2 at its native input side instead of Lite0
LITE_SIDES = {"lite": ("efficientnet_lite0", 224), "lite1": ("efficientnet_lite1", 240),
              "lite2": ("efficientnet_lite2", 260)}  # preset -> (ImageConfig.tower, native side)


@dataclass(frozen=True)
class TextConfig:
    flavour: Literal["bert", "clip"] = "bert"  # bert: post-LN, mean pool; clip: pre-LN, causal, EOS pool
    vocab_size: int = 30522  # token vocabulary size
    width: int = 384  # hidden size of the transformer
    layers: int = 6  # number of transformer blocks
    heads: int = 12  # attention heads per block
    mlp: int = 1536  # hidden size of the feed-forward block
    max_positions: int = 512  # size of the learned position table
    type_vocab: int = 2  # bert token-type table size (0 for clip)
    act: Literal["gelu", "quick_gelu"] = "gelu"  # feed-forward activation
    eps: float = 1e-12  # LayerNorm epsilon


@dataclass(frozen=True)
class ImageConfig:
    tower: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "clip_vision", "tiny_cnn"] = (
        "efficientnet_lite0")  # image backbone (efficientnet_lite*: EfficientNet-Lite0/1/2, model/image.py)
    size: int = 224  # square input side in pixels
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel mean, RGB, on [0, 1] values
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel std, RGB
    grid_channels: int = 1280  # channels of the backbone's spatial grid
    global_channels: int = 1280  # channels of the backbone's global vector


@dataclass(frozen=True)
class ModelConfig:
    name: str = "edge-xmr-lite"  # model identity, stored in bundles and indexes
    base: Base = "lite"  # which pretrained towers the model was built from
    text: TextConfig = field(default_factory=TextConfig)  # shared text transformer
    image: ImageConfig = field(default_factory=ImageConfig)  # image tower
    embed_dim: int = 256  # bi-encoder embedding size (L2-normalised, cosine)
    image_head_hidden: int = 1024  # hidden size of the image MLP head (0: single linear)
    n_image_tokens: int = 8  # image tokens per photo seen by the cross-encoder
    token_dim: int = 128  # stored size of each image token (int8 in the index)
    cross_layers: int = 3  # top text blocks that run jointly over text + image tokens
    max_text_len: int = 32  # tokens per text, including special tokens
    trainable_text_layers: int = 3  # top text blocks fine-tuned (the rest stay pretrained)
    freeze_image_tower: bool = True  # keep the image backbone frozen (features can be cached)
    tower_train_blocks: int = 0  # with a frozen tower: its last N blocks (and head conv) are fine-tuned anyway
    # (efficientnet_lite* only; training caches the input of those blocks instead of the final grid)
    clip_path: str = ""  # for base "clip": the CLIPModel checkpoint directory or hub id
    views: tuple[tuple[int, bool], ...] = ()  # test-time views a photo is encoded in at index time, each
    # (side in pixels, mirrored), averaged (embeddings summed and normalised, tokens meaned); a side above
    # image.size is a bicubic enlargement of the input made inside the model (model/views.py). () = the
    # photo itself. Costs the views' image-encoder work per photo at index time, nothing per query.
    score: ScoreConfig = field(default_factory=ScoreConfig)  # the rerank score's weights (edge_xmr/score.py),
    # set by the calibration; model dirs written before it kept them in the weights file (bases.load migrates)

    def __post_init__(self) -> None:
        for v in self.views:
            if len(v) != 2 or not isinstance(v[1], bool) or int(v[0]) < self.image.size:
                raise ValueError(f"bad view {v!r}: need (side >= image.size = {self.image.size}, mirrored)")
        if self.image.tower == "clip_vision" and any(int(v[0]) != self.image.size for v in self.views):
            raise ValueError("enlarged views need a convolutional image tower (clip_vision has fixed positions)")

    def index_views(self) -> tuple[tuple[int, bool], ...]:
        """The views a photo is encoded in: ``views``, or the photo itself."""
        return self.views or ((self.image.size, False),)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        text = TextConfig(**d.pop("text", {}))
        img = dict(d.pop("image", {}))
        for k in ("mean", "std"):
            if k in img:
                img[k] = tuple(img[k])
        image = ImageConfig(**img)
        if "flip_average" in d:  # configs before views: the photo and its mirror image
            d["views"] = ((image.size, False), (image.size, True)) if d.pop("flip_average") else ()
        d["views"] = tuple((int(v[0]), bool(v[1])) for v in d.get("views", ()))
        if "score" in d:
            d["score"] = ScoreConfig.from_dict(d["score"])
        known = {f for f in ModelConfig.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return ModelConfig(text=text, image=image, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> ModelConfig:
        return ModelConfig.from_dict(json.loads(Path(path).read_text()))


def preset(base: Preset, **overrides: Any) -> ModelConfig:
    """The configuration for a preset: ``lite`` (default: EfficientNet-Lite0 + MiniLM), ``lite1`` /
    ``lite2`` (the same with EfficientNet-Lite1 at 240 / Lite2 at 260 pixels), ``clip`` or ``tiny``.

    >>> preset("tiny").text.width
    32
    """
    if base == "lite":
        cfg = ModelConfig()
    elif base in ("lite1", "lite2"):
        tower, side = LITE_SIDES[base]
        cfg = ModelConfig(name=f"edge-xmr-{base}", image=ImageConfig(tower=tower, size=side))  # type: ignore[arg-type]
    elif base == "tiny":
        cfg = ModelConfig(
            name="edge-xmr-tiny",
            base="tiny",
            text=TextConfig(vocab_size=128, width=32, layers=3, heads=4, mlp=64, max_positions=64),
            image=ImageConfig(tower="tiny_cnn", size=32, grid_channels=16, global_channels=16),
            embed_dim=16,
            image_head_hidden=32,
            n_image_tokens=4,
            token_dim=8,
            cross_layers=2,
            max_text_len=16,
            trainable_text_layers=3,
            freeze_image_tower=False,
        )
    elif base == "clip":
        # text/image sizes are read from the checkpoint when the model is built
        cfg = ModelConfig(
            name="edge-xmr-clip",
            base="clip",
            text=TextConfig(flavour="clip", act="quick_gelu", type_vocab=0, eps=1e-5),
            image=ImageConfig(tower="clip_vision", mean=(0.48145466, 0.4578275, 0.40821073),
                              std=(0.26862954, 0.26130258, 0.27577711)),
            image_head_hidden=0,
            trainable_text_layers=12,
            freeze_image_tower=True,
        )
    else:
        raise ValueError(f"unknown base {base!r}: choose lite, lite1, lite2, clip or tiny")
    return replace(cfg, **overrides) if overrides else cfg
