"""GLCF's networks: the frozen teacher Phi_L, the semantic bottleneck (MS-PEM + SAM) and
the three up-sampling decoders Phi_G, Psi_L, Psi_G.

Shapes at the paper's setting (Swin-T, 224 px, grid stride G = 32, h = w = 7, L = 49)::

    teacher      B x 3 x 224 x 224 -> {4: B x 96 x 56 x 56, 8: B x 192 x 28 x 28,
                                       16: B x 384 x 14 x 14, 32: B x 768 x 7 x 7}
    MS-PEM       stride 8 / 16 / 32 maps -> conv patch P = 4 / 2 / 1 -> B x 240 x 7 x 7 each,
                 summed, flattened, + fixed 2-D sin-cos position encoding -> B x 49 x 240
    SAM          encoder (6 ViT blocks, 12 heads) on [patches, semantic tokens],
                 shared input Linear 240 -> 240, local stack (6 blocks, 16 heads) on the
                 patch latents, global stack (6 blocks, 16 heads) on the semantic latents
                 [+ decoder semantic tokens]; shared final norm and output Linear 240 -> 768
                 -> Theta, Omega: B x 768 x 7 x 7
    decoders     B x 768 x 7 x 7 -> {16: B x 384 x 14 x 14, 8: B x 192 x 28 x 28,
                                     4: B x 96 x 56 x 56}

Taps are named by stride (timm `feature_info` reductions), so any timm `features_only`
encoder works (WideResNet-50-2: 256 / 512 / 1024 / 2048 channels). timm's Swin returns
channels-last (NHWC) maps; they are permuted to NCHW here.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import BackboneWeightsError, create_backbone, feature_channels, feature_reductions
from ..torchvision_ops import import_timm

SAM_VARIANTS = ("ps", "pgs", "pss")
DECODERS = ("swin", "resnet")


# --- teacher -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def probe_backbone(name: str, image_size: int) -> tuple[tuple[tuple[int, int], ...], bool]:
    """((stride, channels) of every feature level, whether the model takes `img_size`).

    Built on the meta device (no memory, no weights), so it costs a fraction of a build.
    ViT-style models (Swin) are built for one input size and need `img_size` when it is
    not their native one; CNNs refuse the argument.
    """
    timm = import_timm()
    arch, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise BackboneWeightsError(f"unknown timm model {name!r}; see timm.list_models()")
    takes_size = True
    with torch.device("meta"):
        try:
            model = timm.create_model(name, features_only=True, out_indices=(0,), img_size=image_size)
        except TypeError:
            takes_size = False
            model = timm.create_model(name, features_only=True, out_indices=(0,))
    levels = tuple((int(d["reduction"]), int(d["num_chs"])) for d in model.feature_info.info)
    return levels, takes_size


def backbone_levels(name: str, image_size: int) -> dict[int, int]:
    """{stride: channels} the backbone offers at `image_size`."""
    levels, _ = probe_backbone(name, image_size)
    return dict(levels)


class Teacher(nn.Module):
    """Phi_L: a timm `features_only` encoder returning NCHW maps keyed by stride.

    B x 3 x S x S -> {stride: B x C_stride x S/stride x S/stride}. Frozen by its owner.
    """

    def __init__(self, name: str, weights: str, strides: tuple[int, ...], image_size: int) -> None:
        super().__init__()
        levels, takes_size = probe_backbone(name, image_size)
        reductions = [s for s, _ in levels]
        missing = sorted(set(strides) - set(reductions))
        if missing:
            raise BackboneWeightsError(f"backbone {name} has no feature maps at strides {missing}; "
                                       f"it offers strides {reductions}")
        self.strides = tuple(sorted(set(strides)))
        indices = [reductions.index(s) for s in self.strides]
        kwargs = {"img_size": image_size} if takes_size else {}
        self.body, self.source = create_backbone(name, weights, indices, **kwargs)
        assert feature_reductions(self.body) == list(self.strides)
        self.channels = dict(zip(self.strides, feature_channels(self.body)))
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last_output = str(getattr(fmt, "value", fmt)) == "NHWC"

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        maps = self.body(images)
        if self.channels_last_output:
            maps = [m.permute(0, 3, 1, 2) for m in maps]  # B x H x W x C -> B x C x H x W
        return dict(zip(self.strides, maps))


# --- semantic bottleneck -------------------------------------------------------------------
def sincos_position_encoding(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos encoding, (height * width) x dim (row-major): the first half of the
    channels encodes the row, the second half the column; each half is [sin, cos] of the
    position times frequencies 10000^(-k / (dim / 4)), k = 0 .. dim/4 - 1."""
    if dim % 4:
        raise ValueError(f"sin-cos position encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def _vit_blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    block = import_timm().models.vision_transformer.Block
    return nn.Sequential(*[block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                                 norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)])


class SemanticBottleneck(nn.Module):
    """MS-PEM + SAM: teacher maps at `in_channels`' strides -> (Theta, Omega), each
    B x out_channels x h x w with h x w the grid at stride `grid_stride`.

    Variants: `ps` L semantic tokens before the encoder; `pgs` one global token before the
    encoder and L before the global decoder; `pss` L before each. Semantic tokens are
    zero-initialised parameters plus the fixed position encoding; the global token has none.
    """

    def __init__(self, in_channels: dict[int, int], grid_stride: int, grid: tuple[int, int], out_channels: int,
                 variant: str = "pss", dim: int = 240, depth: int = 6, heads: int = 12, decoder_dim: int = 240,
                 decoder_depth: int = 6, decoder_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if variant not in SAM_VARIANTS:
            raise ValueError(f"sam_variant must be one of {SAM_VARIANTS}, got {variant!r}")
        self.variant, self.grid, self.out_channels = variant, grid, out_channels
        self.strides = tuple(sorted(in_channels))
        # MS-PEM: patch size grid_stride / s turns every map into the same h x w grid
        self.embed = nn.ModuleDict({str(s): nn.Conv2d(c, dim, grid_stride // s, stride=grid_stride // s)
                                    for s, c in in_channels.items()})
        tokens = grid[0] * grid[1]
        self.register_buffer("pos", sincos_position_encoding(*grid, dim)[None], persistent=False)
        self.register_buffer("decoder_pos", sincos_position_encoding(*grid, decoder_dim)[None], persistent=False)
        if variant in ("ps", "pss"):
            self.semantic = nn.Parameter(torch.zeros(1, tokens, dim))
        else:
            self.global_token = nn.Parameter(torch.zeros(1, 1, dim))
        if variant in ("pgs", "pss"):
            self.decoder_semantic = nn.Parameter(torch.zeros(1, tokens, decoder_dim))
        self.encoder = _vit_blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)  # shared by both stacks
        self.local_decoder = _vit_blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.global_decoder = _vit_blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)  # shared
        self.head = nn.Linear(decoder_dim, out_channels)  # shared
        self.apply(_init_weights)

    def forward(self, maps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """{stride: B x C_s x H_s x W_s} -> (Theta, Omega), each B x out_channels x h x w."""
        patches = sum(self.embed[str(s)](maps[s]).flatten(2) for s in self.strides).transpose(1, 2)
        patches = patches + self.pos  # B x L x dim
        batch, length = patches.shape[:2]
        if self.variant == "pgs":
            extra = self.global_token.expand(batch, -1, -1)
        else:
            extra = (self.semantic + self.pos).expand(batch, -1, -1)
        tokens = self.decoder_embed(self.norm(self.encoder(torch.cat([patches, extra], dim=1))))
        patch_latent, semantic_latent = tokens[:, :length], tokens[:, length:]
        if self.variant != "ps":  # spatial semantic tokens before the global decoder
            fresh = (self.decoder_semantic + self.decoder_pos).expand(batch, -1, -1)
            semantic_latent = torch.cat([semantic_latent, fresh], dim=1)
        theta = self.global_decoder(semantic_latent)[:, -length:]
        omega = self.local_decoder(patch_latent)
        return self._to_map(theta), self._to_map(omega)

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x L x decoder_dim -> B x out_channels x h x w."""
        out = self.head(self.decoder_norm(tokens))
        return out.transpose(1, 2).reshape(out.shape[0], self.out_channels, *self.grid)


def _init_weights(module: nn.Module) -> None:
    """ViT-style init: Xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- up-sampling decoders --------------------------------------------------------------------
class PatchExpand(nn.Module):
    """Swin-Unet's patch expanding: B x H x W x C_in -> B x 2H x 2W x C_out (Linear to 4 C_out,
    each token's channels split into its 2 x 2 children, LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.expand = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.expand(x).reshape(b, h, w, 2, 2, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.out_dim)
        return self.norm(x)


class SwinUpDecoder(nn.Module):
    """B x C x h x w -> {stride: B x C_stride x H_stride x W_stride}, one stage per output
    stride (deepest first): patch expanding, then `depth` Swin blocks (window 7, shifted
    every other block, 32 channels per head)."""

    def __init__(self, in_channels: int, outputs: list[tuple[int, int]], grid: tuple[int, int],
                 depths: tuple[int, ...], window: int = 7) -> None:
        super().__init__()
        timm = import_timm()
        stage_cls = timm.models.swin_transformer.SwinTransformerStage
        self.strides = [s for s, _ in outputs]
        self.expands, self.stages = nn.ModuleList(), nn.ModuleList()
        dim, (h, w) = in_channels, grid
        for (_, channels), depth in zip(outputs, depths):
            h, w = 2 * h, 2 * w
            self.expands.append(PatchExpand(dim, channels))
            self.stages.append(stage_cls(channels, channels, (h, w), depth, downsample=False,
                                         num_heads=max(1, channels // 32), window_size=window))
            dim = channels

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = x.permute(0, 2, 3, 1)  # NHWC
        out = {}
        for stride, expand, stage in zip(self.strides, self.expands, self.stages):
            x = stage(expand(x))
            out[stride] = x.permute(0, 3, 1, 2)
        return out


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNetUpDecoder(nn.Module):
    """B x C x h x w -> {stride: B x C_stride x H_stride x W_stride}: per stage a stride-2
    transposed conv + BN + ReLU, `depth` basic blocks, and a 1x1 conv read-out (the
    teacher's maps may be negative; the next stage reads the block output)."""

    def __init__(self, in_channels: int, outputs: list[tuple[int, int]], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.strides = [s for s, _ in outputs]
        self.stages, self.heads = nn.ModuleList(), nn.ModuleList()
        dim = in_channels
        for (_, channels), depth in zip(outputs, depths):
            self.stages.append(nn.Sequential(
                nn.ConvTranspose2d(dim, channels, 2, stride=2, bias=False), nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True), *[BasicBlock(channels) for _ in range(depth)]))
            self.heads.append(nn.Conv2d(channels, channels, 1))
            dim = channels

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for stride, stage, head in zip(self.strides, self.stages, self.heads):
            x = stage(x)
            out[stride] = head(x)
        return out


def build_decoder(kind: str, in_channels: int, outputs: list[tuple[int, int]], grid: tuple[int, int],
                  depths: tuple[int, ...]) -> nn.Module:
    if kind == "swin":
        return SwinUpDecoder(in_channels, outputs, grid, depths)
    if kind == "resnet":
        return ResNetUpDecoder(in_channels, outputs, depths)
    raise ValueError(f"decoder must be one of {DECODERS}, got {kind!r}")
