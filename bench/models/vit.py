"""Vision Transformers via timm (imported lazily): ViT-T/4, ViT-S/4, ViT-S/32 and the tiny CI ViT."""
from __future__ import annotations

from torch import nn

from bench.registries import MODELS


def _patch_for(img_size: int, patch: int) -> int:
    """The largest patch size <= ``patch`` that divides ``img_size``."""
    return next(p for p in range(min(patch, img_size), 0, -1) if img_size % p == 0)


def _vit(num_classes: int, in_chans: int, img_size: int, *, dim: int, depth: int, heads: int,
         patch: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=img_size, patch_size=_patch_for(img_size, patch),
                              in_chans=in_chans, num_classes=num_classes, embed_dim=dim,
                              depth=depth, num_heads=heads)
    model.mask_blocks = [f"blocks.{i}" for i in range(depth)]
    return model


@MODELS.register("vit_t")
def vit_t(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT-Tiny via timm (dim 192, depth 12, 3 heads, patch 4, LayerNorm); the patch is the
    largest size <= 4 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=192, depth=12, heads=3, patch=4)


@MODELS.register("vit_s")
def vit_s(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT-Small via timm (dim 384, depth 12, 6 heads, patch 4, LayerNorm); the patch is the
    largest size <= 4 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=384, depth=12, heads=6, patch=4)


@MODELS.register("vit_s32")
def vit_s32(num_classes: int, in_chans: int = 3, img_size: int = 224) -> nn.Module:
    """ViT-S/32 via timm (dim 384, depth 12, 6 heads, patch 32, LayerNorm; timm's
    vit_small_patch32_224 shape), the SAM-ON paper's ImageNet model; the patch is the largest size
    <= 32 that divides img_size."""
    return _vit(num_classes, in_chans, img_size, dim=384, depth=12, heads=6, patch=32)


@MODELS.register("vit_ci")
def vit_ci(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Tiny LayerNorm ViT for CI via timm (dim 32, depth 2, 2 heads); patch img_size/4 when
    that divides (2 on 8x8, 8 on 32x32), else the largest <= img_size/4 that divides."""
    return _vit(num_classes, in_chans, img_size, dim=32, depth=2, heads=2,
                patch=max(1, img_size // 4))
