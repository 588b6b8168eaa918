"""Pack the EMA generator of an SRN checkpoint (``<work>/checkpoints/srn_last.pt``) as a model bundle, to
evaluate a training run before it ends (``ddasr-eval --model OUT``).

    python scripts/probes/bundle_from_checkpoint.py CHECKPOINT OUT [--name NAME] [--generator ema|generator]
        [--noise-estimator WEIGHTS.pt]

The bundle records the checkpoint, its iteration and the preset; preprocessing is the preset's (LR voxel
size = ``data.hr_voxel_size`` x scale). Output settings: the network alone (override with ddasr-eval's
model options or pack again with scripts/ship_starter.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddasr_nipype.bundle import save_bundle
from ddasr_nipype.models import GeneratorConfig, with_learned_noise_estimator


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--generator", choices=["ema", "generator"], default="ema")
    parser.add_argument("--noise-estimator", type=Path,
                        help="pack this LearnedNoiseEstimator (scripts/train_noise_estimator.py) with the generator")
    opts = parser.parse_args(argv)
    state = torch.load(opts.checkpoint, map_location="cpu", weights_only=True)
    preset = state["preset"]
    data = preset["data"]
    hr_voxel = float(data.get("hr_voxel_size") or 1.0)
    preprocessing = {"plane": data["plane"], "scale": data["scale"],
                     "normalization": {"method": "percentile", "percentiles": list(data["percentiles"])},
                     "hr_voxel_size": hr_voxel, "lr_voxel_size": hr_voxel * data["scale"]}
    training = {"preset": preset.get("name"), "recipe": preset, "seed": state.get("seed"),
                "from_checkpoint": {"path": str(opts.checkpoint.resolve()), "iteration": int(state["iteration"]),
                                    "generator": opts.generator},
                "srn": {"iterations": int(state["iteration"]), "final_losses": state.get("last_losses", {})}}
    config = GeneratorConfig.from_dict(state["models"]["generator_config"])
    generator_state = state["models"][opts.generator]
    if opts.noise_estimator:
        config, generator_state = with_learned_noise_estimator(
            config, generator_state, torch.load(opts.noise_estimator, map_location="cpu", weights_only=True))
        training["noise_estimator"] = {"path": str(opts.noise_estimator.resolve())}
    bundle = save_bundle(opts.out, name=opts.name or opts.out.name, generator_state=generator_state,
                         generator_config=config,
                         preprocessing=preprocessing, backbone=state.get("backbone") or {}, training=training)
    print(f"{bundle.path}: iteration {state['iteration']}, generator sha256 {bundle.sha256[:12]}")


if __name__ == "__main__":
    main()
