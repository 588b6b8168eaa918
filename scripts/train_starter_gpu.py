"""Train the starter model's candidates on one GPU within a wall-time budget, evaluate them on the
held-out split there, and pack each as a bundle archive.

    python scripts/train_starter_gpu.py SHARED_DATA_DIR WORK_DIR --pack PACK_DIR [--budget SECONDS]
                                        [--variant NAME ...]

``PACK_DIR`` receives one ``bundle-<variant>.tar.gz`` per trained variant (bundle, recipe, logs),
``eval.tar.gz`` (the selection tables), ``driver.log`` and ``summary.json``.

One DSN is trained (preset ``starter-gpu``) and its pairs are shared by every SRN variant, which then
train side by side on the same GPU (the starter networks are far too small to fill one). Each stage
gets a share of the budget through ``ddasr-train --dsn-time-limit/--srn-time-limit``, so the run
ends with usable bundles even when the GPU is slower than planned. Held-out split, never trained on:
HR sub-trio; LR sub-IXI546, 565, 577, 603, 606 (as in scripts/train_starter.sh).

The evaluation here is the selection step (NIQE only): the shipped
numbers come from ``scripts/evaluate_starter.sh`` on the packed bundle.

Variants (``--variant``; default: the first four):

- ``gan``: the preset as it is (L1 + perceptual warm-up, then adversarial training);
- ``gan-light``: the same with a 5x smaller adversarial weight (``eta_adv`` 0.02);
- ``psnr``: no adversarial stage (L1 + perceptual only);
- ``psnr-nonoise``: ``psnr`` without the LR noise augmentation (the ablation of ``srn.lr_noise``);
- ``res``, ``res-d1b4``, ``res-d0f48b6``, ``res-d0b8``: ``psnr`` with the generator's global bicubic
  residual, at the preset's size and at three other depth/width trade-offs; ``res-gan-light``:
  ``gan-light`` with the residual;
- ``res-d0f48b6-aug``, ``res-d0b8-aug``: the two full-resolution generators with ``srn.augment`` (the
  eight flips/transposes of each crop). The CPU runs point to the generator as the bottleneck (a
  model trained on the test degradation itself gains only about 0.3 dB in the brain), so these
  are the next candidates for a GPU session.
- ``nl-bic``, ``nl-mix``, ``nl-bic-d0b8``, ``nl-mix-d0b8``: generators with the noise-level input
  (``generator.noise_level_input``), ``srn.augment``, and noise on half the LR crops (sigma 0-4 %), L1 +
  perceptual. ``nl-bic`` and ``nl-mix`` fine-tune the previous starter (generator 4442dabc,
  ``ixi-t1w-x2`` as of commit 0c0bea8; give it with ``--init nl-bic=BUNDLE``), its generator widened by
  a zero-initialised noise-level channel; the ``-d0b8`` ones train the full-resolution generator (32
  features, no stride-2 stage, 8 RRDBs) from scratch. ``-bic``: classical bicubic pairs
  (``--degradation bicubic``, no DSN); ``-mix``: the DSN's pairs plus bicubic and realsr pairs of the
  same slices (``synthesis.mix``).
- ``nl-bic-d0b8-ft``: ``nl-bic-d0b8`` trained on (3000 more iterations at half the learning rate; give the
  bundle to start from with ``--init nl-bic-d0b8-ft=BUNDLE``); ``nl-bic-d0f48b8``: the same from scratch
  with 48 features.
- ``nl-area-ft``, ``nl-ks-ft``, ``nl-area-ks-ft`` and the ``-n8`` ones: the shipped generator (12e1042e; give
  it with ``--init VARIANT=ixi-t1w-x2``) fine-tuned for 4000 iterations on bicubic pairs plus the same
  slices degraded otherwise (``synthesis.mix``): area averaging and/or k-space truncation, and realsr
  blurs; ``-n8`` with LR noise up to 8 %. On sub-otsu (training data) they trade 0.1 dB on bicubic LR and
  0.1-0.3 dB on realesrgan LR for 0.4 dB on area LR; none was shipped (model card, "Tried and not shipped").

- ``ln-d2b3``, ``ln-d2b6f32``: the default model's recipe (``t1w-x2``: physically grounded degradations,
  ``--degradation mri``, on every HR training subject of ``scripts/hr_training_set.sh``; a noise-level
  input told the level of the noise added to each crop; preset ``t1w-x2-ln-cpu``) from scratch at GPU
  scale, 8000 iterations at learning rate 2e-4 (the CPU recipe: 4000 + 3000 + 1500 in three stages). The
  learned noise-level estimator the generator is told by at inference is the one packed in the bundled
  ``t1w-x2``, written out for ``srn.noise_estimator_weights`` (``WORK_DIR/noise-estimator.pt``).
  ``ln-d2b3``: the default's architecture (does more training alone move the +0.75 dB on held-out noisy
  sub-trio?); ``ln-d2b6f32``: 32 features and 6 bottleneck RRDBs (about 2.5x its work per slice, still
  below the previous default's; does capacity?). ``ln-d2b3`` was run on the CPU at the thirteenth stop
  (bf16, 1.5 h): +0.652 / +0.855 dB on held-out sub-trio against ``t1w-x2``'s +0.749 / +0.992 (its card,
  "Tried"), so a GPU run should ask for more than 8000 iterations or more capacity, not this alone.
  Both were run for 3000 iterations on the CPU at the fourteenth stop (same seed and schedule): on sub-trio
  +0.465 / +0.703 and +0.484 / +0.719 dB, on sub-vxm +0.630 / +2.111 and +0.661 / +2.145 (every third
  slice). The 2.5x capacity's +0.02-0.03 dB at equal iterations is inside the seed spread of ``ln-d2b3``
  (seeds 21-23: 0.05 dB on noisy input, 0.13-0.33 on clean); 3000 -> 8000 iterations of ``ln-d2b3`` were
  worth +0.19 on noisy sub-trio. A GPU run should spend its time on iterations first, and compare over
  seeds.
  Bundles trained this way are evaluated like ``t1w-x2``:
  ``scripts/probes/paired_variants.py`` on sub-trio and sub-vxm with ``--variant
  strength=1,background=input,slice_denoise=2`` (the packed archive's bundle has no recommended settings).

With ``--dsn-from`` (a DSN checkpoint or bundle of an earlier run) no DSN is trained and every
variant starts at once.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_PRESET = REPO / "ddasr_nipype" / "training" / "presets" / "starter-gpu.yml"
HELD_OUT_LR = ("IXI546", "IXI565", "IXI577", "IXI603", "IXI606")
TRAIN_HR = ("forrest", "otsu")
PSNR = {"pixel_warmup_iterations": None}  # None: the whole run, no adversarial stage
RESIDUAL = {"pixel_warmup_iterations": None, "generator": {"global_residual": True}}
VARIANTS = {
    # first GPU run (generator as in `starter`, no global residual)
    "gan": {},
    "gan-light": {"srn": {"loss": {"eta_adv": 0.02}}},
    "psnr": {"srn": PSNR},
    "psnr-nonoise": {"srn": {**PSNR, "lr_noise": {}}},
    # second GPU run: generators with the global bicubic residual, L1 + perceptual only
    "res": {"srn": RESIDUAL},
    "res-d1b4": {"srn": {**RESIDUAL, "generator": {"global_residual": True, "num_down": 1,
                                                   "num_bottleneck_blocks": 4}}},
    "res-d0f48b6": {"srn": {**RESIDUAL, "generator": {"global_residual": True, "num_down": 0, "num_feat": 48,
                                                      "num_grow_ch": 24, "num_bottleneck_blocks": 6}}},
    "res-d0b8": {"srn": {**RESIDUAL, "generator": {"global_residual": True, "num_down": 0,
                                                   "num_bottleneck_blocks": 8}}},
    "res-gan-light": {"srn": {"generator": {"global_residual": True}, "loss": {"eta_adv": 0.02}}},
    # third: the full-resolution generators with the dihedral crop augmentation
    "res-d0f48b6-aug": {"srn": {**RESIDUAL, "augment": True,
                                "generator": {"global_residual": True, "num_down": 0, "num_feat": 48,
                                              "num_grow_ch": 24, "num_bottleneck_blocks": 6}}},
    "res-d0b8-aug": {"srn": {**RESIDUAL, "augment": True,
                             "generator": {"global_residual": True, "num_down": 0, "num_bottleneck_blocks": 8}}},
}
# fourth: one generator for clean and noisy scans, told each slice's noise level
NOISE_LEVEL = {"pixel_warmup_iterations": None, "augment": True, "lr_noise": {"probability": 0.5, "sigma": [0.0, 0.04]},
               "generator": {"global_residual": True, "noise_level_input": True}}
FINE_TUNE = {**NOISE_LEVEL, "lr": 1.0e-4, "iterations": 9000, "restart_period": 9000}
FULL_RES = {**NOISE_LEVEL, "iterations": 3600, "restart_period": 3600,
            "generator": {"global_residual": True, "noise_level_input": True, "num_down": 0,
                          "num_bottleneck_blocks": 8}}
MIX = {"mix": ["bicubic", "realsr"]}
MULTI_FT = {**FULL_RES, "lr": 1.0e-4, "iterations": 4000, "restart_period": 4000}
MULTI_FT_N8 = {**MULTI_FT, "lr_noise": {"probability": 0.5, "sigma": [0.0, 0.08]}}
VARIANTS.update({
    "nl-bic": {"srn": FINE_TUNE},
    "nl-mix": {"synthesis": MIX, "srn": FINE_TUNE},
    "nl-bic-d0b8": {"srn": FULL_RES},
    "nl-mix-d0b8": {"synthesis": MIX, "srn": FULL_RES},
    # fifth: the best of the fourth trained on (--init nl-bic-d0b8-ft=BUNDLE), and a wider one
    # (these two take no LR scans, so the HR grid is given: 1 mm, the x2 target of the 2 mm IXI scans)
    "nl-bic-d0b8-ft": {"data": {"hr_voxel_size": 1.0},
                       "srn": {**FULL_RES, "lr": 1.0e-4, "iterations": 3000, "restart_period": 3000}},
    "nl-bic-d0f48b8": {"data": {"hr_voxel_size": 1.0},
                       "srn": {**FULL_RES, "iterations": 2400, "restart_period": 2400,
                               "generator": {**FULL_RES["generator"], "num_feat": 48, "num_grow_ch": 24}}},
})
# sixth: the shipped generator (12e1042e) fine-tuned on several down-samplings at once. It gains 1.4 dB
# in the brain on bicubic LR but only 0.4 dB on k-space-truncated LR, clean or noisy: it has learnt
# bicubic's anti-aliasing blur. Every HR slice is degraded once per listed degradation, on top of the
# bicubic pairs. ``-area``: area (box) averaging, k-space truncation kept unseen; ``-ks``: k-space
# truncation; ``-area-ks``: both; realsr blurs in all. ``-n8``: LR noise up to 8 % as in the shipped
# generator's last (CPU) step; with 4 % they lost its gain on heavily degraded LR (realesrgan).
MULTI_DEGRADATION = {
    "nl-area-ft": (["area", "realsr"], MULTI_FT),
    "nl-ks-ft": (["kspace", "realsr"], MULTI_FT),
    "nl-area-ks-ft": (["area", "kspace", "realsr"], MULTI_FT),
    "nl-area-ft-n8": (["area", "realsr"], MULTI_FT_N8),
    "nl-area-ks-ft-n8": (["area", "kspace", "realsr"], MULTI_FT_N8),
}
VARIANTS.update({name: {"data": {"hr_voxel_size": 1.0}, "synthesis": {"mix": mix}, "srn": srn}
                 for name, (mix, srn) in MULTI_DEGRADATION.items()})
# seventh: the default's recipe at GPU scale (see the module docstring)
LEARNED_ESTIMATOR_PRESET = REPO / "ddasr_nipype" / "training" / "presets" / "t1w-x2-ln-cpu.yml"
LEARNED_ESTIMATOR_FROM = "t1w-x2"  # the bundle whose packed estimator the ln- variants are told by
LN_SCRATCH = {"pixel_warmup_iterations": None, "lr": 2.0e-4, "iterations": 8000, "restart_period": 8000}
LN_VARIANTS = {
    "ln-d2b3": {"srn": LN_SCRATCH},
    "ln-d2b6f32": {"srn": {**LN_SCRATCH, "generator": {"num_feat": 32, "num_bottleneck_blocks": 6}}},
}
VARIANTS.update(LN_VARIANTS)
#: variants that fine-tune a given generator (``--init VARIANT=BUNDLE``), and what it must be
NEEDS_INIT = {
    "nl-bic": "the previous starter (generator 4442dabc: ixi-t1w-x2 as of commit 0c0bea8), widened",
    "nl-mix": "the previous starter (generator 4442dabc: ixi-t1w-x2 as of commit 0c0bea8), widened",
    "nl-bic-d0b8-ft": "the bundle of variant nl-bic-d0b8",
    **dict.fromkeys(MULTI_DEGRADATION, "the shipped starter (generator 12e1042e: ixi-t1w-x2 as of commit d138526)"),
}
#: command-line arguments of ``ddasr-train`` a variant adds (a ``--degradation`` variant uses no DSN)
VARIANT_ARGS = {
    "nl-bic": ("--degradation", "bicubic"),
    "nl-mix": (),
    "nl-bic-d0b8": ("--degradation", "bicubic"),
    "nl-bic-d0b8-ft": ("--degradation", "bicubic"),
    "nl-bic-d0f48b8": ("--degradation", "bicubic"),
    **dict.fromkeys(MULTI_DEGRADATION, ("--degradation", "bicubic")),
    **dict.fromkeys(LN_VARIANTS, ("--degradation", "mri")),
}
DEFAULT_VARIANTS = ("gan", "gan-light", "psnr", "psnr-nonoise")


def classical(name: str) -> bool:
    """Whether the variant trains on classical pairs (``--degradation``): no DSN, no LR scans."""
    return "--degradation" in VARIANT_ARGS.get(name, ())


def merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_preset(name: str, base: dict, *, noise_estimator: Path | None = None) -> dict:
    """The recipe of variant ``name``: ``base`` (the ``--preset``; for the ``ln-`` variants the default
    model's preset ``t1w-x2-ln-cpu``, told by ``noise_estimator``, a weights file) with the variant's changes."""
    if name in LN_VARIANTS:
        base = yaml.safe_load(LEARNED_ESTIMATOR_PRESET.read_text())
        base["srn"]["noise_estimator_weights"] = str(noise_estimator) if noise_estimator else None
    preset = merge(base, VARIANTS[name])
    if preset["srn"].get("pixel_warmup_iterations") is None:
        preset["srn"]["pixel_warmup_iterations"] = preset["srn"]["iterations"]
    preset["description"] = f"{base.get('description', '')} (variant {name})"
    return preset


def write_noise_estimator(bundle_name: str, out: Path) -> Path:
    """Write the learned noise-level estimator packed in bundle ``bundle_name`` as a weights file for
    ``srn.noise_estimator_weights`` (what ``scripts/train_noise_estimator.py`` writes)."""
    import torch

    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.models import LearnedNoiseEstimator
    from ddasr_nipype.models.srn_arch import packed_noise_estimator_state

    bundle = load_bundle(bundle_name)
    if bundle.generator_config.noise_estimator != "learned":
        raise SystemExit(f"{bundle.path}: its generator has no learned noise estimator")
    state = bundle.load_generator("cpu").state_dict()
    weights = {k: v.float() for k, v in packed_noise_estimator_state(state).items()}
    LearnedNoiseEstimator().load_state_dict(weights)  # checks the keys and shapes
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out)
    return out


def log(msg: str, fh) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with the hr/ and lr/ BIDS datasets")
    parser.add_argument("out", type=Path, help="work area (runs, evaluation)")
    parser.add_argument("--pack", type=Path, required=True, help="where the archives go")
    parser.add_argument("--preset", type=Path, default=BASE_PRESET, help="base recipe of every variant")
    parser.add_argument("--hr-label", action="append", help=f"HR training subjects (default {TRAIN_HR})")
    parser.add_argument("--budget", type=float, default=520.0, help="wall seconds for everything")
    parser.add_argument("--eval-reserve", type=float, default=110.0, help="seconds kept for evaluation")
    parser.add_argument("--dsn-share", type=float, default=0.22, help="share of the training time for the DSN")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--dsn-from", type=Path, help="reuse this DSN (checkpoint or bundle) instead of training one")
    parser.add_argument("--init", action="append", metavar="VARIANT=BUNDLE",
                        help="start this variant's generator from BUNDLE (ddasr-train --init-generator)")
    parser.add_argument("--skip-eval", action="store_true",
                        help="no held-out evaluation here (evaluate the packed bundles elsewhere)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per training process")
    parser.add_argument("--python", default=sys.executable)
    opts = parser.parse_args(argv)
    inits = dict(item.split("=", 1) for item in opts.init or ())
    missing = [f"--init {name}=BUNDLE ({NEEDS_INIT[name]})" for name in opts.variant or DEFAULT_VARIANTS
               if name in NEEDS_INIT and name not in inits]
    if missing:
        parser.error("give " + "; ".join(missing))

    start = time.monotonic()
    end_training = start + opts.budget - opts.eval_reserve
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "runs"
    work.mkdir(exist_ok=True)
    pack = opts.pack.resolve()
    pack.mkdir(parents=True, exist_ok=True)
    fh = open(pack / "driver.log", "a")
    variants = opts.variant or list(DEFAULT_VARIANTS)
    base = yaml.safe_load(opts.preset.read_text())
    data = opts.data.resolve()
    lr_labels = sorted(p.name for p in (data / "lr").glob("sub-*") if p.name[4:] not in HELD_OUT_LR)
    log(f"variants {variants}; {len(lr_labels)} LR training subjects; budget {opts.budget:.0f} s", fh)
    estimator = hr_all = None
    if any(name in LN_VARIANTS for name in variants):
        estimator = write_noise_estimator(LEARNED_ESTIMATOR_FROM, out / "noise-estimator.pt")
        hr_all = Path(subprocess.run(["bash", str(REPO / "scripts" / "hr_training_set.sh"), str(data),
                                      str(out / "hr-all")], check=True, capture_output=True,
                                     text=True).stdout.strip())
        log(f"ln- variants: estimator of {LEARNED_ESTIMATOR_FROM} -> {estimator}; HR training set {hr_all}", fh)

    def train_cmd(name: str, *extra: str) -> list[str]:
        extra = VARIANT_ARGS.get(name, ()) + extra
        if name in inits:
            extra += ("--init-generator", inits[name])
        if classical(name) and "--dsn-from" in extra:  # e.g. the DSN the first variant trained
            at = extra.index("--dsn-from")
            extra = extra[:at] + extra[at + 2:]
        preset_path = work / f"{name}.yml"
        preset_path.write_text(yaml.safe_dump(variant_preset(name, base, noise_estimator=estimator),
                                              sort_keys=False))
        cmd = [opts.python, "-m", "ddasr_nipype.bids_app.train", "--hr", str(hr_all if name in LN_VARIANTS else data / "hr"),
               "--out", str(work / name / f"ixi-t1w-x2-{name}"), "--work-dir", str(work / name / "work"),
               "--preset", str(preset_path), "--device", opts.device, "--seed", "0", "--allow-random-vgg19",
               "--num-threads", str(opts.threads), "--name", f"ixi-t1w-x2-{name}", "--no-tensorboard"]
        for label in () if name in LN_VARIANTS else opts.hr_label or TRAIN_HR:  # ln-: the whole training set
            cmd += ["--hr-participant-label", label]
        if not classical(name):
            cmd += ["--lr", str(data / "lr")]
            for label in lr_labels:
                cmd += ["--lr-participant-label", label]
        return cmd + list(extra)

    procs: dict[str, subprocess.Popen] = {}
    logs = {}

    def launch(name: str, *extra: str, note: str) -> None:
        logs[name] = open(work / f"{name}.log", "w")
        procs[name] = subprocess.Popen(train_cmd(name, *extra), stdout=logs[name], stderr=subprocess.STDOUT)
        log(f"{name}: started ({note})", fh)

    def srn_limit(setup: float) -> str:
        """Seconds left for an SRN stage that starts now, after ``setup`` seconds of preparation."""
        return f"{max(20.0, end_training - time.monotonic() - setup):.0f}"

    if opts.dsn_from or all(classical(name) for name in variants):
        for name in variants:  # every variant starts at once, from the given DSN or from classical pairs
            limit = srn_limit(35.0)  # data preparation and synthesis in each run
            dsn = ("--dsn-from", str(opts.dsn_from.resolve())) if opts.dsn_from else ()
            launch(name, *dsn, "--srn-time-limit", limit, note=f"DSN {opts.dsn_from}, SRN limit {limit} s")
    else:  # the first variant trains the DSN; the others start from its pairs
        first, others = variants[0], variants[1:]
        training_left = end_training - time.monotonic()
        dsn_limit = max(30.0, opts.dsn_share * training_left)
        srn_first = max(30.0, training_left - dsn_limit - 45.0)  # 45 s: data preparation and synthesis
        launch(first, "--dsn-time-limit", f"{dsn_limit:.0f}", "--srn-time-limit", f"{srn_first:.0f}",
               note=f"DSN limit {dsn_limit:.0f} s, SRN limit {srn_first:.0f} s")
        first_work = work / first / "work"
        pairs = first_work / "pairs" / "pairs.npz"
        while others and not pairs.is_file():
            if procs[first].poll() is not None:
                log(f"{first}: ended (rc {procs[first].returncode}) before its pairs existed", fh)
                break
            time.sleep(2)
        if others and pairs.is_file():
            log(f"pairs ready after {time.monotonic() - start:.0f} s", fh)
            for name in others:
                for sub in ("data", "pairs"):  # the prepared data and pairs, reused through --resume
                    (work / name / "work" / sub).mkdir(parents=True, exist_ok=True)
                    for f in (first_work / sub).iterdir():
                        target = work / name / "work" / sub / f.name
                        if not target.exists():
                            try:
                                os.link(f, target)
                            except OSError:  # another file system
                                shutil.copyfile(f, target)
                limit = srn_limit(15.0)
                launch(name, "--resume", "--dsn-from", str(first_work / "checkpoints" / "dsn_last.pt"),
                       "--srn-time-limit", limit, note=f"SRN limit {limit} s")

    for name, proc in procs.items():
        rc = proc.wait()
        logs[name].close()
        log(f"{name}: rc {rc} after {time.monotonic() - start:.0f} s", fh)

    bundles = [work / name / f"ixi-t1w-x2-{name}" for name in variants
               if (work / name / f"ixi-t1w-x2-{name}" / "manifest.json").is_file()]
    log(f"bundles: {[b.name for b in bundles]}", fh)
    evals = []
    if bundles and not opts.skip_eval:
        models = [a for b in bundles for a in ("--model", str(b))]
        ev = [opts.python, "-m", "ddasr_nipype.bids_app.evaluate", "--metric", "niqe", "--device", opts.device]
        paired = ev + ["--hr", str(data / "hr"), "--participant-label", "trio", "--degradation", "kspace-rician",
                       "--degradation", "bicubic", "--out", str(out / "eval" / "paired"), "--panels", "2"] + models
        unpaired = ev + ["--lr", str(data / "lr"), "--out", str(out / "eval" / "unpaired"), "--panels", "1"] + models
        for label in HELD_OUT_LR:
            unpaired += ["--participant-label", label]
        for tag, cmd in (("paired", paired), ("unpaired", unpaired)):
            fh_eval = open(out / f"eval-{tag}.log", "w")
            evals.append((tag, subprocess.Popen(cmd, stdout=fh_eval, stderr=subprocess.STDOUT), fh_eval))
        for tag, proc, fh_eval in evals:
            try:
                rc = proc.wait(timeout=max(10.0, start + opts.budget - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed (budget)"
            fh_eval.close()
            log(f"eval {tag}: rc {rc} after {time.monotonic() - start:.0f} s", fh)

    # pack: one archive per bundle (with its preset, training log and loss curves), one for the rest
    for bundle in bundles:
        name = bundle.name.removeprefix("ixi-t1w-x2-")
        with tarfile.open(pack / f"bundle-{name}.tar.gz", "w:gz") as tar:
            tar.add(bundle, arcname=bundle.name)
            tar.add(work / f"{name}.yml", arcname=f"{bundle.name}.recipe.yml")
            tar.add(work / f"{name}.log", arcname=f"{bundle.name}.train.log")
            for sub in ("logs", "images"):
                folder = work / name / "work" / sub
                if folder.is_dir():
                    tar.add(folder, arcname=f"{bundle.name}.{sub}")
    with tarfile.open(pack / "eval.tar.gz", "w:gz") as tar:
        for item in ["eval", "eval-paired.log", "eval-unpaired.log"] + [f"runs/{v}.log" for v in variants]:
            if (out / item).exists():
                tar.add(out / item, arcname=item)
    summary = {"variants": variants, "bundles": [b.name for b in bundles],
               "seconds": round(time.monotonic() - start, 1)}
    (pack / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done: {summary}", fh)
    return 0 if bundles else 1


if __name__ == "__main__":
    sys.exit(main())
