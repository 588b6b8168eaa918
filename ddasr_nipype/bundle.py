"""Model bundles: a trained DDASR model as one self-describing, checksummed directory.

A bundle directory holds::

    manifest.json   format version, name, scale, plane, preprocessing, perceptual backbone,
                    training summary, recommended output settings (optional), and for each
                    weights file its role, architecture, config, sha256
    srn.pt          SR generator state dict (the EMA copy when training kept one)
    dsn.pt          down-sampling network state dict (optional)
    MODEL_CARD.md   what was trained, on what, how long, and how good it is
    SHA256SUMS      the same checksums in ``sha256sum -c`` format

Weights are plain state dicts loaded with ``torch.load(weights_only=True)``; the architecture is rebuilt
from the config stored in the manifest, so a bundle needs no code of its own to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ChecksumMismatchError, ModelBundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GENERATOR_FILE = "srn.pt"
DSN_FILE = "dsn.pt"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
BUNDLED_MODELS_DIR = Path(__file__).parent / "resources" / "models"
DEFAULT_MODEL = "t1w-x2"


def sha256sum(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_bundled_models() -> list[str]:
    """Names of the model bundles shipped inside the package."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / MANIFEST_NAME).is_file())


def resolve_bundle_path(name_or_path: str | Path) -> Path:
    """Turn a bundled model name or a directory path into the bundle directory.

    A value that names an existing directory is taken as a path; otherwise it must be the name of a
    bundled model.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if str(name_or_path) in list_bundled_models():
        return BUNDLED_MODELS_DIR / str(name_or_path)
    bundled = ", ".join(list_bundled_models()) or "none"
    if os.sep in str(name_or_path) or candidate.suffix:
        raise ModelBundleError(f"model bundle directory not found: {name_or_path}")
    raise ModelBundleError(
        f"unknown model {name_or_path!r}: not a directory and not a bundled model "
        f"(bundled models: {bundled}); pass the path of a bundle directory made by ddasr-train"
    )


@dataclass(frozen=True)
class ModelBundle:
    """A loaded (and checksum-verified) model bundle."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def scale(self) -> int:
        return int(self.manifest["scale"])

    @property
    def plane(self) -> str:
        return str(self.manifest["plane"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.manifest.get("preprocessing", {}))

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.preprocessing.get("normalization", {}))

    @property
    def output(self) -> dict[str, Any]:
        """The output settings the model was evaluated with (``strength``, ``background``; see
        :func:`ddasr_nipype.inference.output_settings`); empty for bundles that recommend none."""
        return dict(self.manifest.get("output", {}))

    @property
    def backbone(self) -> dict[str, Any]:
        return dict(self.manifest.get("backbone", {}))

    @property
    def sha256(self) -> str:
        """Checksum of the SR generator weights: the model's identity in sidecars and reports."""
        return str(self.manifest["files"][GENERATOR_FILE]["sha256"])

    @property
    def has_dsn(self) -> bool:
        return DSN_FILE in self.manifest["files"]

    @property
    def generator_config(self):
        from .models import GeneratorConfig

        return GeneratorConfig.from_dict(self.manifest["files"][GENERATOR_FILE]["config"])

    @property
    def dsn_config(self):
        if not self.has_dsn:
            return None
        from .models import DSNConfig

        return DSNConfig.from_dict(self.manifest["files"][DSN_FILE]["config"])

    def load_generator(self, device: str = "cpu"):
        """Rebuild the SR generator from its config and load its weights (eval mode)."""
        from .models import SRGenerator

        return self._load_module(SRGenerator(self.generator_config), GENERATOR_FILE, device)

    def load_dsn(self, device: str = "cpu"):
        """Rebuild the DSN from its config and load its weights (eval mode)."""
        if not self.has_dsn:
            raise ModelBundleError(f"{self.path}: this bundle has no down-sampling network (dsn.pt)")
        from .models import DSN

        return self._load_module(DSN(self.dsn_config), DSN_FILE, device)

    def _load_module(self, module, filename: str, device: str):
        import torch

        path = self.path / filename
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            module.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, KeyError, ValueError) as err:
            raise ModelBundleError(f"{path}: cannot load weights: {err}") from err
        return module.to(device).eval()


def verify_bundle(path: Path, manifest: dict[str, Any]) -> None:
    """Check every weights file listed in the manifest against its recorded sha256."""
    for filename, entry in manifest["files"].items():
        if "sha256" not in entry or filename == CARD_FILE:
            continue
        target = path / filename
        if not target.is_file():
            raise ModelBundleError(f"{path}: bundle file {filename} is missing")
        actual = sha256sum(target)
        if actual != entry["sha256"]:
            raise ChecksumMismatchError(
                f"{target}: sha256 {actual} does not match the manifest's {entry['sha256']}; "
                "the file is corrupt or was replaced"
            )


def load_bundle(name_or_path: str | Path, *, verify: bool = True) -> ModelBundle:
    """Load a model bundle by bundled name or directory path, verifying its checksums."""
    path = resolve_bundle_path(name_or_path)
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise ModelBundleError(f"{path}: not a model bundle (no {MANIFEST_NAME})") from err
    except json.JSONDecodeError as err:
        raise ModelBundleError(f"{manifest_path}: malformed manifest: {err}") from err
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelBundleError(
            f"{manifest_path}: bundle format version {version!r} is not supported "
            f"(this ddasr-nipype reads version {FORMAT_VERSION})"
        )
    missing = [key for key in ("name", "scale", "plane", "files") if key not in manifest]
    if missing or GENERATOR_FILE not in manifest.get("files", {}):
        raise ModelBundleError(
            f"{manifest_path}: incomplete manifest (missing: {', '.join(missing) or GENERATOR_FILE})"
        )
    if verify:
        verify_bundle(path, manifest)
    return ModelBundle(path=path, manifest=manifest)


def _config_dict(config) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def save_bundle(
    out_dir: str | Path,
    *,
    name: str,
    generator_state: dict,
    generator_config,
    dsn_state: dict | None = None,
    dsn_config=None,
    preprocessing: dict[str, Any],
    backbone: dict[str, Any],
    training: dict[str, Any],
    card_text: str | None = None,
    weights_dtype: str = "float32",
    output: dict[str, Any] | None = None,
) -> ModelBundle:
    """Write a model bundle atomically (into a temporary sibling directory, then renamed).

    ``preprocessing`` must give at least ``plane`` and ``scale``; ``backbone`` is the perceptual
    backbone provenance returned by :func:`ddasr_nipype.models.load_vgg19`. ``weights_dtype="float16"``
    stores floating-point tensors in half precision (half the size; loading casts them back to the
    model's float32 parameters). ``output`` records the recommended output settings
    (:func:`ddasr_nipype.inference.output_settings`), which inference then uses by default.
    """
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16}
    if weights_dtype not in dtypes:
        raise ValueError(f"weights_dtype must be one of {sorted(dtypes)}, got {weights_dtype!r}")

    out_dir = Path(out_dir).expanduser().resolve()
    for key in ("plane", "scale"):
        if key not in preprocessing:
            raise ValueError(f"preprocessing must give {key!r}")
    if output:
        from .inference import output_settings

        output = output_settings(**output)
    if (dsn_state is None) != (dsn_config is None):
        raise ValueError("dsn_state and dsn_config must be given together")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        weights = [(GENERATOR_FILE, "generator", "SRGenerator", generator_state, generator_config)]
        if dsn_state is not None:
            weights.append((DSN_FILE, "down-sampling network", "DSN", dsn_state, dsn_config))
        for filename, role, arch, state, config in weights:
            state = {
                key: (value.to(dtypes[weights_dtype]) if value.is_floating_point() else value)
                .detach().cpu().contiguous()
                for key, value in state.items()
            }
            torch.save(state, tmp / filename)
            files[filename] = {
                "role": role,
                "arch": arch,
                "config": _config_dict(config),
                "sha256": sha256sum(tmp / filename),
                "bytes": (tmp / filename).stat().st_size,
                "dtype": weights_dtype,
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "scale": int(preprocessing["scale"]),
            "plane": str(preprocessing["plane"]),
            "preprocessing": preprocessing,
            "backbone": backbone,
            "training": training,
            "ddasr_nipype_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        if output:
            manifest["output"] = output
        (tmp / CARD_FILE).write_text(card_text or default_card(manifest))
        write_manifest(tmp, manifest)
        (tmp / SUMS_FILE).write_text(
            "".join(f"{entry['sha256']}  {filename}\n" for filename, entry in files.items())
        )
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            backup = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            out_dir.rename(backup)
            tmp.rename(out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(out_dir)


def write_manifest(bundle_dir: Path | str, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as ``bundle_dir``'s manifest.json (sorted keys, indented), atomically (a temporary
    file renamed over it). The weights' checksums are in it: change only what describes them."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def default_card(manifest: dict[str, Any]) -> str:
    """A minimal model card written from the manifest when the trainer gives none."""
    lines = [
        f"# Model card: {manifest['name']}",
        "",
        f"- Scale: x{manifest['scale']} in the {manifest['plane']} plane",
        f"- Perceptual backbone: {json.dumps(manifest['backbone'], sort_keys=True)}",
        f"- Training: {json.dumps(manifest['training'], sort_keys=True)}",
        f"- ddasr-nipype version: {manifest['ddasr_nipype_version']}",
        "",
        "| file | sha256 |",
        "|---|---|",
    ]
    lines += [f"| {fn} | `{entry['sha256']}` |" for fn, entry in manifest["files"].items()]
    return "\n".join(lines) + "\n"
