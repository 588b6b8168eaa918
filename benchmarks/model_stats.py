"""Parameter counts and FLOPs per output pixel of the paper-size DDASR networks.

Usage::

    python benchmarks/model_stats.py            # shapes below, meta device (no real compute)
    python benchmarks/model_stats.py --device cpu

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs; only
matmuls/convs/attention are counted, not activations or normalisation). Attention is forced to
the math SDPA kernel so its batched matmuls are counted on every device. On the default meta
device nothing is computed, so even RRDBNet-23 is counted in a second.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddasr_nipype.models import (
    DSN,
    AttentionUNetDiscriminator,
    DiscriminatorConfig,
    DSNConfig,
    GeneratorConfig,
    RRDBNet,
    RRDBNetConfig,
    SRGenerator,
)


def count(model: nn.Module, run: Callable[[nn.Module], torch.Tensor]) -> tuple[int, int, torch.Size]:
    """(parameters, forward FLOPs, output shape) of one forward pass."""
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    # Grad mode on and parameters requiring grad keep nn.MultiheadAttention off its fused fast
    # path, whose kernel the flop counter does not know.
    with counter, sdpa_kernel(SDPBackend.MATH):
        out = run(model)
    return params, counter.get_total_flops(), out.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="meta", help="meta (default, no compute), cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device)

    cases = [
        ("DSN (d=512, 3+3+3 layers, x2)", lambda: DSN(DSNConfig()),
         lambda m: m(rand(1, 1, 256, 256), rand(1, 1, 128, 128)), "HR 256x256 + LR 128x128 -> 128x128"),
        ("SRGenerator (paper-size defaults, x2)", lambda: SRGenerator(GeneratorConfig()),
         lambda m: m(rand(1, 1, 120, 120)), "LR 120x120 -> 240x240"),
        ("AttentionUNetDiscriminator (nf=64)", lambda: AttentionUNetDiscriminator(DiscriminatorConfig()),
         lambda m: m(rand(1, 1, 240, 240)), "240x240 -> logits 240x240"),
        ("RRDBNet (ESRGAN, 23 RRDBs, x2)", lambda: RRDBNet(RRDBNetConfig()),
         lambda m: m(rand(1, 1, 120, 120)), "LR 120x120 -> 240x240"),
    ]
    print(f"device: {device}; torch {torch.__version__}")
    print(f"{'network':40s} {'params (M)':>10s} {'GFLOPs':>9s} {'kFLOPs/out px':>14s}  input")
    for name, build, run, shapes in cases:
        with torch.device(device):
            torch.manual_seed(0)
            model = build().eval()
        params, flops, out_shape = count(model, run)
        pixels = out_shape[-2] * out_shape[-1] * out_shape[0]
        print(f"{name:40s} {params / 1e6:10.2f} {flops / 1e9:9.1f} {flops / pixels / 1e3:14.1f}  {shapes}")


if __name__ == "__main__":
    main()
