"""Super-resolution of one T1w image: conform -> brain extraction -> super-resolution -> outputs."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ddasr_nipype.interfaces import (
    BrainExtraction,
    Conform,
    ConsistencySummary,
    DataConsistency,
    GridMetadata,
    Reslice,
    SuperResolve,
)
from ddasr_nipype.interfaces.consistency import projection_of


def scheduler_node(interface, name: str, **kwargs) -> pe.Node:
    """A node run in the scheduler's own process (``run_without_submitting``): no round trip through a
    worker and the next poll of the scheduler. ``n_procs=0``: nipype's MultiProc runs such a node only when
    it has a free processor to count it against; with none it would wait for the brain extraction, which
    holds them all, although it takes no worker. For bookkeeping (headers, dicts, sidecars, sinks, a few
    lines of HTML) and, in the app, the physics consistency map (one thread of numpy, about a second):
    the scheduler starts nothing else while one runs."""
    return pe.Node(interface, name=name, run_without_submitting=True, n_procs=0, **kwargs)


def bundle_has_dsn(model) -> bool:
    """Whether the bundle ``model`` holds a DSN (read when the workflow is built; a bundle that cannot be
    read here has none, and fails when its node runs)."""
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.errors import ModelBundleError

    try:
        return load_bundle(model, verify=False).has_dsn
    except ModelBundleError:
        return False


def _output_text(model, strength: float | None, background: str | None, slice_denoise: float | None = None,
                 projection: str | None = None) -> str:
    """The methods sentence on the output settings (empty for the network alone). The settings come from
    the bundle unless given; a bundle that cannot be read here is checked when the node runs."""
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.errors import ModelBundleError
    from ddasr_nipype.inference import (DEFAULT_OUTPUT, SLICE_DENOISE_PATCH, SLICE_DENOISE_RADIUS,
                                        SLICE_DENOISE_WIDTH_MM, output_settings)

    try:
        bundle = load_bundle(model, verify=False)
    except ModelBundleError:
        bundle = None
    settings = output_settings(bundle, strength=strength, background=background, slice_denoise=slice_denoise,
                               projection=projection)
    if settings == DEFAULT_OUTPUT:
        return ""
    text = ""
    if settings["slice_denoise"] > 0:
        text += (" Before the network, the slices were denoised by non-local means across slices: each voxel "
                 f"averaged with the same voxel of the {SLICE_DENOISE_RADIUS} neighbouring slices on either side, weighted by a "
                 f"Gaussian of their distance ({SLICE_DENOISE_WIDTH_MM:g} mm) and by how alike the slices are over "
                 f"{SLICE_DENOISE_PATCH} x {SLICE_DENOISE_PATCH} in-plane patches "
                 f"(h = {settings['slice_denoise']:g} x the noise level the model estimated on the input's slices).")
    given = "denoised input slice" if settings["slice_denoise"] > 0 else "input slice"
    if settings["projection"] == "kspace":
        text += (f" Each output slice was made consistent with its {given}: its central k-space (the "
                 f"frequencies the input holds) was replaced by the {given}'s.")
    elif settings["projection"] == "area":
        text += (f" Each output slice was made consistent with its {given}: the mean of each block of output "
                 f"voxels was set to the {given}'s voxel.")
    if settings["strength"] < 1.0:
        text += (f" Inside the head, the network's output was blended with the bicubic interpolation of "
                 f"the input (network weight {settings['strength']:g}).")
    if settings["background"] == "input":
        text += " Outside the head (dilated Otsu mask), the bicubic interpolation of the input was kept."
    return text


def _bundle_scale(model) -> int:
    """The bundle's scale (2 when it cannot be read here: the super_resolve node reports that)."""
    from ddasr_nipype.bundle import load_bundle
    from ddasr_nipype.errors import ModelBundleError

    try:
        return int(load_bundle(model, verify=False).scale)
    except ModelBundleError:
        return 2


def init_sr_wf(
    *,
    model: str,
    planes: str = "sagittal",
    device: str = "auto",
    skip_brain_extraction: bool = False,
    omp_nthreads: int = 1,
    batch_size: int | None = None,
    tile_size: int | None = None,
    strength: float | None = None,
    background: str | None = None,
    slice_denoise: float | None = None,
    projection: str | None = None,
    consistency: bool = True,
    max_memory_gb: float | None = None,
    consistency_in_scheduler: bool = False,
    name: str = "sr_wf",
):
    """Super-resolve one T1w image with a DDASR model.

    The input is validated and reoriented to RAS (exact: axes are only permuted and flipped),
    brain-extracted with deepbet and, in parallel, super-resolved slice by slice. The result is put
    back into the **input's original orientation** (axis order and directions of the input file,
    voxels ``scale`` times smaller in the super-resolved plane), with a field-of-view-preserving
    affine: world coordinates match the input's. The brain mask is resliced onto that same grid.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ddasr_nipype.workflows.sr import init_sr_wf
            wf = init_sr_wf(model="t1w-x2")

    Parameters
    ----------
    model : :obj:`str`
        Model bundle: a bundled model name or the path of a bundle directory.
    planes : :obj:`str`
        ``sagittal``, ``coronal`` or ``axial`` (x2 in that plane, as in the paper) or ``all``
        (the three planes fused into an isotropic x2 volume).
    device : :obj:`str`
        ``auto``, ``cpu`` or ``cuda``.
    skip_brain_extraction : :obj:`bool`
        Do not compute a brain mask (outputs ``brain_mask`` and ``mask_info`` stay undefined).
    omp_nthreads : :obj:`int`
        CPU threads per node (torch).
    batch_size, tile_size : :obj:`int`, optional
        Slices per forward pass (default: 1 on the CPU, 8 on a GPU); tile slices larger than
        ``tile_size`` pixels (bounded memory).
    strength : :obj:`float`, optional
        Weight of the network's output against bicubic interpolation of the input (1: the network
        alone). Default: the model bundle's recommendation.
    background : :obj:`str`, optional
        ``input`` keeps the bicubic interpolation of the input in the air around the head, ``model``
        uses the network's output everywhere. Default: the model bundle's recommendation.
    slice_denoise : :obj:`float`, optional
        Denoise the network's input across neighbouring slices first (non-local means, ``h`` = this x
        the noise level the model reads; 0: off). Default: the model bundle's recommendation.
    projection : :obj:`str`, optional
        ``kspace`` or ``area``: project each output slice onto its (denoised) input slice under that model
        of the down-sampling; ``none``: off. Default: the model bundle's recommendation.
    consistency : :obj:`bool`
        Compute the data-consistency z-maps (:class:`~ddasr_nipype.interfaces.DataConsistency`): the
        output re-degraded to the input grid by area averaging (and by the bundle's DSN when it has
        one), minus the input, over the input's noise level.
    max_memory_gb : :obj:`float`, optional
        Refuse, from its header and before reading its data, an input whose super-resolution would
        need more memory than this (:func:`ddasr_nipype.inference.sr_memory_gb`). Default: no limit.
    consistency_in_scheduler : :obj:`bool`
        Compute the physics consistency map (numpy, one thread) in the scheduler's own process, taking
        no worker slot (``run_without_submitting``, ``n_procs=0``), so that it runs while the brain
        extraction holds the workers: for MultiProc on one machine (the ``ddasr`` app sets it there).
        A bundle with a DSN keeps its worker (torch). Off: an ordinary node.
    name : :obj:`str`
        Name of the workflow.

    Inputs
    ------
    t1w
        The T1w image to super-resolve.

    Outputs
    -------
    t1w_ref
        The validated input in its original orientation (for reports).
    sr_t1w
        The super-resolved T1w.
    sr_metadata
        Dictionary: scale, planes, device, runtime, model name and sha256, output settings, warnings;
        shapes, voxel sizes and up-sampling factors along the axes of the input and output files.
    brain_mask
        Brain mask on the super-resolved grid (uint8).
    mask_info
        Dictionary: brain-extraction backend and mask volume.
    zmap, zmap_sr
        The physics consistency z-map on the input grid, and its copy on the super-resolved grid.
    dsn_zmap, dsn_zmap_sr
        The same with the bundle's DSN (undefined for a bundle without one).
    consistency
        Dictionary: the noise level and each map's summary figures (RMS z, fraction of |z| > 3,
        largest cluster) in the brain mask (the head mask with ``skip_brain_extraction``).

    Examples
    --------
    >>> wf = init_sr_wf(model="t1w-x2", planes="all", omp_nthreads=2)
    >>> sorted(wf.list_node_names())  # doctest: +NORMALIZE_WHITESPACE
    ['brain_extraction', 'conform', 'consistency_summary', 'data_consistency', 'grid_metadata',
     'inputnode', 'outputnode', 'reslice_mask', 'super_resolve']
    >>> "data_consistency" in init_sr_wf(model="t1w-x2", consistency=False).list_node_names()
    False
    """
    workflow = Workflow(name=name)
    plane_text = (
        "in the sagittal, coronal and axial planes, and the three results were averaged into an "
        "isotropic volume with twice the sampling density along every axis"
        if planes == "all" else
        f"slice by slice in the {planes} plane, doubling the sampling density within that plane"
    )
    bet_text = "" if skip_brain_extraction else (
        " A brain mask was computed on the input with *deepbet* [@deepbet] and resliced onto the "
        "super-resolved grid."
    )
    dsn_text = " and, separately, by the model's down-sampling network (DSN)" if bundle_has_dsn(model) else ""
    consistency_text = "" if not consistency else f"""
The consistency of the output with the acquired data was mapped: the output was re-degraded to the input
grid by averaging the output voxels within each input voxel{dsn_text}, the input was subtracted, and the
difference was divided by the input's noise level (the mode of the local standard deviation of a
Laplacian-difference residual within the head), giving a z-map on the input grid."""
    workflow.__desc__ = f"""\
Each T1-weighted (T1w) image was validated (3D, finite, non-empty, sane voxel sizes) and reoriented to
RAS without interpolation. It was then super-resolved with the DDASR super-resolution network [@ddasr]
(model `{Path(str(model)).name}`) {plane_text}.{_output_text(model, strength, background, slice_denoise, projection)} Intensities were
normalized with a percentile rule before the network and mapped back afterwards; the output keeps the
input's field of view and orientation.{bet_text}{consistency_text}
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["t1w_ref", "sr_t1w", "sr_metadata", "brain_mask", "mask_info", "model_sha256",
                    "zmap", "zmap_sr", "dsn_zmap", "dsn_zmap_sr", "consistency"]
        ),
        name="outputnode",
    )
    conform = pe.Node(Conform(orientation="RAS"), name="conform")
    if max_memory_gb is not None:
        conform.inputs.max_memory_gb = max_memory_gb
        conform.inputs.sr_scale = _bundle_scale(model)
        conform.inputs.sr_planes = planes
    super_resolve = pe.Node(
        SuperResolve(
            model=model, planes=planes, device=device, use_gpu=device == "cuda",
            num_threads=omp_nthreads,
            **({"batch_size": batch_size} if batch_size else {}),
            **({"tile_size": tile_size} if tile_size else {}),
            **({"strength": strength} if strength is not None else {}),
            **({"background": background} if background is not None else {}),
            **({"slice_denoise": slice_denoise} if slice_denoise is not None else {}),
            **({"projection": projection} if projection is not None else {}),
        ),
        name="super_resolve", n_procs=omp_nthreads, mem_gb=2.0,
    )
    grid_metadata = scheduler_node(GridMetadata(), "grid_metadata")
    workflow.connect([
        (inputnode, conform, [("t1w", "in_file")]),
        (inputnode, outputnode, [("t1w", "t1w_ref")]),
        (conform, super_resolve, [("out_file", "in_file")]),
        # the network runs on the RAS copy; its output is written back in the input's orientation
        (conform, super_resolve, [("in_orientation", "out_orientation")]),
        (super_resolve, outputnode, [("out_file", "sr_t1w")]),
        (inputnode, grid_metadata, [("t1w", "source_file")]),
        (super_resolve, grid_metadata, [("metadata", "metadata"), ("out_file", "sr_file")]),
        (grid_metadata, outputnode, [("metadata", "sr_metadata")]),
        (super_resolve, outputnode, [("model_sha256", "model_sha256")]),
    ])
    data_consistency = None
    if consistency:
        # torch threads only for a bundle's DSN map; the physics map alone is one thread of numpy, so the
        # node leaves the other CPUs to the brain extraction (it does not wait for the mask: the maps'
        # figures are computed in the mask afterwards, by consistency_summary)
        with_dsn = bundle_has_dsn(model)
        dsn_threads = omp_nthreads if with_dsn else 1
        in_scheduler = consistency_in_scheduler and not with_dsn
        interface = DataConsistency(model=model, device=device, num_threads=dsn_threads)
        data_consistency = (scheduler_node(interface, "data_consistency", mem_gb=1.5) if in_scheduler else
                            pe.Node(interface, name="data_consistency", n_procs=dsn_threads, mem_gb=1.5))
        workflow.connect([
            (inputnode, data_consistency, [("t1w", "in_file")]),
            (super_resolve, data_consistency, [("out_file", "sr_file"),
                                               (("metadata", projection_of), "projection")]),
            (data_consistency, outputnode, [("out_zmap", "zmap"), ("out_zmap_sr", "zmap_sr"),
                                            ("out_dsn_zmap", "dsn_zmap"), ("out_dsn_zmap_sr", "dsn_zmap_sr")]),
        ])
        if skip_brain_extraction:  # the figures in the input's head mask
            workflow.connect(data_consistency, "metadata", outputnode, "consistency")
    if skip_brain_extraction:
        return workflow

    brain_extraction = pe.Node(
        BrainExtraction(backend="deepbet", num_threads=omp_nthreads),
        name="brain_extraction", n_procs=omp_nthreads, mem_gb=2.0,
    )
    reslice_mask = pe.Node(
        Reslice(interpolation="linear", threshold=0.5), name="reslice_mask"
    )
    workflow.connect([
        (conform, brain_extraction, [("out_file", "in_file")]),
        (brain_extraction, reslice_mask, [("out_mask", "in_file")]),
        (super_resolve, reslice_mask, [("out_file", "reference_file")]),
        (reslice_mask, outputnode, [("out_file", "brain_mask")]),
        (brain_extraction, outputnode, [("info", "mask_info")]),
    ])
    if data_consistency is not None:
        # the figures in the brain mask, on the input's own grid (reoriented only): no reslicing
        consistency_summary = scheduler_node(ConsistencySummary(), "consistency_summary", mem_gb=0.5)
        workflow.connect([
            (data_consistency, consistency_summary, [("out_zmap", "zmap_file"), ("metadata", "metadata")]),
            (brain_extraction, consistency_summary, [("out_mask", "mask_file")]),
            (consistency_summary, outputnode, [("metadata", "consistency")]),
        ])
        if with_dsn:
            workflow.connect(data_consistency, "out_dsn_zmap", consistency_summary, "dsn_zmap_file")
    return workflow
