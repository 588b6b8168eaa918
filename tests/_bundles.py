"""A tiny *random-weights* model bundle for tests (clearly a test fixture, never a real model)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_bundle(out_dir: Path, *, with_dsn: bool = False, seed: int = 0,
                     preprocessing: dict | None = None) -> Path:
    """Write a bundle named ``tiny-test`` with an untrained, seeded, very small generator
    (``preprocessing``: extra manifest entries, e.g. ``lr_voxel_size``)."""
    import torch

    from ddasr_nipype.bundle import save_bundle
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    torch.manual_seed(seed)
    config = GeneratorConfig(num_feat=4, num_grow_ch=4, num_down=1, num_bottleneck_blocks=1)
    state = SRGenerator(config).state_dict()
    # random weights give outputs around 0, clipped to an all-zero image; a positive bias keeps the
    # output a non-empty image (still meaningless: this bundle only exercises the plumbing)
    state["conv_last.bias"].fill_(0.5)
    kwargs = {}
    if with_dsn:
        from ddasr_nipype.models import DSN, DSNConfig

        dsn_config = DSNConfig(d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1,
                               num_decoder_layers=1, cape_pool_size=4)
        kwargs = {"dsn_state": DSN(dsn_config).state_dict(), "dsn_config": dsn_config}
    save_bundle(
        out_dir,
        name="tiny-test",
        generator_state=state,
        generator_config=config,
        preprocessing={"plane": "sagittal", "scale": 2, **(preprocessing or {})},
        backbone={"source": "random", "seed": seed},
        training={"note": "untrained test fixture (random weights)"},
        **kwargs,
    )
    return Path(out_dir)
