"""The BIDS-Derivatives data sink of the app (niworkflows' ``DerivativesDataSink``, under ``ddasr/``).

Apart from :mod:`ddasr_nipype.interfaces.bids` because importing niworkflows' sink indexes the
TemplateFlow folder, seconds of CPU that the other BIDS nodes, run in nipype's worker processes,
need not pay. The app runs the sinks in its own process (``run_without_submitting``).
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import isdefined

from .bids import OUT_PATH_BASE


def _import_niworkflows_sink():
    """niworkflows' ``DerivativesDataSink``, imported without indexing TemplateFlow.

    At import, ``niworkflows.interfaces.bids`` sets ``STANDARD_SPACES = templateflow.api.templates()``,
    which builds a pybids index of TemplateFlow's whole skeleton: 6-15 s of CPU in every run, although
    this app writes no template space (``space``, the only use of that list, is never set). For that
    one import, the template names are read from TemplateFlow's ``tpl-*`` folders instead: the same
    names, without the index.
    """
    import sys

    if "niworkflows.interfaces.bids" not in sys.modules:
        import templateflow.api as tf_api
        from templateflow import conf as tf_conf

        def folder_templates(**query):
            if query:  # not what niworkflows asks: the real query
                return tf_api.__getattr__("templates")(**query)
            return sorted(p.name[4:] for p in Path(tf_conf.TF_HOME).glob("tpl-*") if p.is_dir())

        tf_api.templates = folder_templates
        try:
            import niworkflows.interfaces.bids  # noqa: F401
        finally:
            del tf_api.templates
    from niworkflows.interfaces.bids import DerivativesDataSink

    return DerivativesDataSink


_DerivativesDataSink = _import_niworkflows_sink()

#: start of a gzip member header (RFC 1952): magic, deflate, no flags (no file name, comment or extra
#: field), no time stamp
_PLAIN_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


def _is_plain_gzip(path) -> bool:
    """Whether ``path`` starts with a gzip header that carries no file name, comment, extra field or time
    stamp (as nibabel writes them): copied byte for byte, it is what niworkflows' copy would write, bar the
    compression level."""
    with open(path, "rb") as f:
        return f.read(len(_PLAIN_GZIP)) == _PLAIN_GZIP


def copy_derivative(src, dst) -> bool:
    """niworkflows' ``_copy_any`` (the sink's copy of an unchanged file) without its re-compression.

    niworkflows copies a ``.nii.gz`` onto a ``.nii.gz`` by decompressing it and compressing it again at
    gzip level 9, to drop a file name and time stamp from the gzip header. This package's nodes write
    their images with nibabel, whose gzip headers carry neither: those are copied byte for byte (the
    super-resolved T1w of the bundled example: 1.5 s of level-9 compression in the app's main process
    saved, for a file 3 % larger). Anything else goes through niworkflows' copy.
    """
    import os
    import shutil

    from niworkflows.utils.misc import _copy_any

    if str(src).endswith(".gz") and str(dst).endswith(".gz") and _is_plain_gzip(src):
        if os.path.lexists(dst):
            os.unlink(dst)
        shutil.copyfile(src, dst)
        return True
    return _copy_any(src, dst)


__all__ = ["ANAT_PATTERNS", "DerivativesDataSink", "copy_derivative", "derivative_path"]


# The entities a raw T1w may carry, in BIDS order (anat: acq, ce, rec, run, echo, flip, inv, mt,
# part; chunk), kept in the derivatives' names. niworkflows' anat patterns drop echo, flip, inv, mt and
# part: two echoes of one multi-echo MPRAGE would then be written to the same file.
_T1W_ENTITIES = (
    "[_ses-{session}][_acq-{acquisition}][_ce-{ceagent}][_rec-{reconstruction}][_run-{run}]"
    "[_echo-{echo}][_flip-{flip}][_inv-{inv}][_mt-{mt}][_part-{part}][_chunk-{chunk}]"
)
ANAT_PATTERNS = (
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}" + _T1W_ENTITIES
    + "[_space-{space}][_res-{resolution}][_desc-{desc}]_{suffix<T1w>}"
    "{extension<.nii|.nii.gz|.json>|.nii.gz}",
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}" + _T1W_ENTITIES
    + "[_space-{space}][_res-{resolution}][_label-{label}]_desc-{desc}_{suffix<mask>|mask}"
    "{extension<.nii|.nii.gz|.json>|.nii.gz}",
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}" + _T1W_ENTITIES
    + "[_space-{space}][_res-{resolution}]_desc-{desc}_{suffix<statmap>|statmap}"
    "{extension<.nii|.nii.gz|.json>|.nii.gz}",
    "sub-{subject}/{datatype<figures>}/sub-{subject}" + _T1W_ENTITIES
    + "[_space-{space}][_desc-{desc}]_{suffix<T1w|mask>}{extension<.html|.svg>|.svg}",
)
"""Path patterns of this app's derivatives (super-resolved T1w, brain mask, consistency z-maps, report
figures)."""


class DerivativesDataSink(_DerivativesDataSink):
    """niworkflows' data sink writing under ``<base_directory>/ddasr``.

    Its anatomical patterns keep every entity of a raw T1w name (echo, part, inv, ...), so that
    distinct inputs never share an output name.

    >>> DerivativesDataSink.out_path_base
    'ddasr'
    """

    out_path_base = OUT_PATH_BASE
    _config_entities_dict = _DerivativesDataSink._config_entities_dict + [
        {"name": "chunk", "pattern": "[_/\\\\]+chunk-([0-9]+)"},
    ]
    _config_entities = frozenset(e["name"] for e in _config_entities_dict)
    _file_patterns = ANAT_PATTERNS + tuple(_DerivativesDataSink._file_patterns)

    def _run_interface(self, runtime):
        # niworkflows writes "Resolution": "Unknown" for a res entity outside TemplateFlow's spaces, over
        # the description given in meta_dict (BIDS: a res entity needs its Resolution described)
        given = self.inputs.meta_dict.get("Resolution") if isdefined(self.inputs.meta_dict) else None
        import niworkflows.interfaces.bids as nw_bids

        # the sink's module-level copy function, for this call (sinks run one at a time in the app's process)
        nw_copy, nw_bids._copy_any = nw_bids._copy_any, copy_derivative
        try:
            runtime = super()._run_interface(runtime)
        finally:
            nw_bids._copy_any = nw_copy
        out_meta = self._results.get("out_meta")
        if given is not None and out_meta and Path(out_meta).is_file():
            import json

            meta = json.loads(Path(out_meta).read_text())
            meta["Resolution"] = given
            Path(out_meta).write_text(json.dumps(meta, sort_keys=True, indent=2))
        return runtime


def derivative_path(source_file: str | Path, **entities: str) -> str:
    """The path, relative to ``<output_dir>/ddasr``, that :class:`DerivativesDataSink` gives the
    derivative of ``source_file`` with ``entities`` (e.g. ``desc="ddasr", suffix="T1w"``).

    >>> derivative_path("/data/sub-01/anat/sub-01_echo-2_T1w.nii.gz", desc="ddasr", suffix="T1w")
    'sub-01/anat/sub-01_echo-2_desc-ddasr_T1w.nii.gz'
    """
    from bids.layout import Config, parse_file_entities
    from bids.layout.writing import build_path

    custom = Config(name="custom", entities=DerivativesDataSink._config_entities_dict,
                    default_path_patterns=DerivativesDataSink._file_patterns)
    name = Path(source_file)
    found = parse_file_entities(f"/{name.parent.parent.name}/{name.parent.name}/{name.name}",
                                config=["bids", "derivatives", custom])
    found.update({"extension": ".nii.gz", **entities})
    path = build_path(found, path_patterns=list(DerivativesDataSink._file_patterns))
    if not path:
        raise ValueError(f"no derivative path for {source_file} with {entities}")
    return path
