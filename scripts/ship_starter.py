"""Pack a trained bundle as the shipped starter model: float16 weights, the model card, a few panels.

    python scripts/ship_starter.py TRAINED_BUNDLE [--dest ddasr_nipype/resources/models/ixi-t1w-x2]
                                   [--card CARD.md] [--panel PNG ...] [--dsn-from BUNDLE]
                                   [--strength S] [--background input|model] [--slice-denoise H]
                                   [--projection none|kspace|area]
                                   [--noise-estimator PT]

The weights are re-saved in half precision (about half the size); the manifest keeps the training
recipe and records where the weights came from. Evaluate the *packed* bundle (scripts/evaluate_starter.sh)
and give its card with ``--card`` (MODEL_CARD.md is not part of the checksummed weights, so the card
can be rewritten after the evaluation without touching them). ``--dsn-from`` takes the DSN from another
bundle (a generator trained on classical pairs has none of its own); ``--strength``, ``--background``,
``--slice-denoise`` and ``--projection`` record the output settings the model was evaluated with, which
inference then uses by default.
``--noise-estimator`` packs a learned noise-level estimator with a generator trained told the added noise
level (``GeneratorConfig.noise_estimator``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from ddasr_nipype.bundle import GENERATOR_FILE, DSN_FILE, CARD_FILE, load_bundle, save_bundle, sha256sum
from ddasr_nipype.models import with_learned_noise_estimator

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trained", type=Path)
    parser.add_argument("--dest", type=Path, default=REPO / "ddasr_nipype/resources/models/ixi-t1w-x2")
    parser.add_argument("--card", type=Path, help="model card to ship (default: the trained bundle's)")
    parser.add_argument("--panel", type=Path, nargs="*", default=[], help="PNG panels to ship beside the card")
    parser.add_argument("--checkpoint", type=Path,
                        help="take the generator from this SRN checkpoint (srn_last.pt) instead of the bundle")
    parser.add_argument("--generator", choices=["ema", "generator"], default="ema",
                        help="with --checkpoint: the EMA copy or the last trained weights")
    parser.add_argument("--name", help="model name (default: the trained bundle's)")
    parser.add_argument("--dsn-from", type=Path, help="bundle whose DSN to ship (default: the trained bundle's)")
    parser.add_argument("--strength", type=float, help="recommended network weight against bicubic (0-1)")
    parser.add_argument("--background", choices=["input", "model"], help="recommended background")
    parser.add_argument("--slice-denoise", type=float,
                        help="recommended denoising across slices before the network (h / noise level; 0: off)")
    parser.add_argument("--projection", choices=["none", "kspace", "area"],
                        help="recommended projection of each output slice onto its input slice")
    parser.add_argument("--noise-estimator", type=Path,
                        help="pack this LearnedNoiseEstimator (scripts/train_noise_estimator.py) with the generator: "
                             "for one trained told the added noise level (scripts/probes/known_noise_level.py)")
    opts = parser.parse_args(argv)

    trained = load_bundle(opts.trained)
    shipped = load_bundle(opts.dest) if (opts.dest / "manifest.json").is_file() else None
    same_weights = (shipped is not None and shipped.manifest["training"].get("shipped_from", {})
                    .get("srn_sha256_float32") == trained.sha256)
    output = {k: v for k, v in (("strength", opts.strength), ("background", opts.background),
                                ("slice_denoise", opts.slice_denoise), ("projection", opts.projection))
              if v is not None}
    if same_weights and opts.card and not opts.panel and not output:
        # card-only update: the weights stay exactly as they are
        shutil.copyfile(opts.card, opts.dest / CARD_FILE)
        print(f"updated {opts.dest / CARD_FILE}")
        return
    if shipped is not None and trained.path.resolve() == shipped.path.resolve():
        # the shipped bundle itself: new recommended settings (and card, panels), the weights untouched
        if not (output or opts.card or opts.panel) or opts.checkpoint or opts.dsn_from or opts.noise_estimator:
            raise SystemExit("shipping a bundle onto itself updates only --strength/--background/--slice-denoise/"
                             "--projection, --card and --panel; give at least one, and no weights")
        _update_in_place(shipped, output, opts.card, opts.panel)
        return
    state = lambda name: torch.load(trained.path / name, map_location="cpu", weights_only=True)  # noqa: E731
    training = dict(trained.manifest["training"])
    training["shipped_from"] = {"path": str(opts.trained), "srn_sha256_float32": trained.sha256}
    generator_state = state(GENERATOR_FILE)
    dsn_bundle = load_bundle(opts.dsn_from) if opts.dsn_from else trained
    dsn_state = (torch.load(dsn_bundle.path / DSN_FILE, map_location="cpu", weights_only=True)
                 if dsn_bundle.has_dsn else None)
    if opts.dsn_from:
        training["dsn_shipped_from"] = {"path": str(opts.dsn_from), "dsn_sha256":
                                        dsn_bundle.manifest["files"][DSN_FILE]["sha256"]}
    if opts.checkpoint:
        ckpt = torch.load(opts.checkpoint, map_location="cpu", weights_only=True)
        generator_state = ckpt["models"][opts.generator]
        training["shipped_from"].update(checkpoint=str(opts.checkpoint), generator=opts.generator,
                                        iteration=int(ckpt["iteration"]))
    generator_config = trained.generator_config
    if opts.noise_estimator:
        generator_config, generator_state = with_learned_noise_estimator(
            generator_config, generator_state,
            torch.load(opts.noise_estimator, map_location="cpu", weights_only=True))
        training["noise_estimator"] = {"path": str(opts.noise_estimator), "sha256": sha256sum(opts.noise_estimator)}
    bundle = save_bundle(
        opts.dest, name=opts.name or trained.name, generator_state=generator_state,
        generator_config=generator_config,
        dsn_state=dsn_state, dsn_config=dsn_bundle.dsn_config if dsn_state is not None else None,
        preprocessing=trained.preprocessing, backbone=trained.backbone, training=training,
        card_text=(opts.card or trained.path / CARD_FILE).read_text(), weights_dtype="float16",
        output=output or None,
    )
    if opts.panel:
        panels = bundle.path / "panels"
        panels.mkdir(exist_ok=True)
        for png in opts.panel:
            shutil.copyfile(png, panels / png.name)
    total = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    print(f"shipped {bundle.name} to {bundle.path}: {total / 1e6:.2f} MB, srn.pt sha256 {bundle.sha256}")
    for name in (GENERATOR_FILE, DSN_FILE):
        if (bundle.path / name).is_file():
            print(f"  {name}: {sha256sum(bundle.path / name)}")


def _update_in_place(bundle, output: dict, card, panels) -> None:
    """Record new recommended output settings (completed and checked by
    :func:`ddasr_nipype.inference.output_settings` from the ones recorded), a new card and panels in a shipped
    bundle; its weights and their checksums stay as they are."""
    from ddasr_nipype.bundle import write_manifest
    from ddasr_nipype.inference import output_settings

    manifest = dict(bundle.manifest)
    if output:
        previous = manifest.get("output", {})
        manifest["output"] = output_settings(**{**previous, **output})
        manifest.setdefault("training", {})["output_changed"] = {"from": previous, "to": manifest["output"]}
        write_manifest(bundle.path, manifest)
        print(f"{bundle.name}: recommended output {manifest['output']} (was {previous})")
    if card:
        shutil.copyfile(card, bundle.path / CARD_FILE)
    for png in panels or ():
        (bundle.path / "panels").mkdir(exist_ok=True)
        shutil.copyfile(png, bundle.path / "panels" / png.name)
    load_bundle(bundle.path)  # the checksums still hold


if __name__ == "__main__":
    main()
