"""Training as a nipype workflow: ``train_dsn`` -> ``synthesize_pairs`` -> ``train_srn``."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ddasr_nipype.interfaces.training import SynthesizePairs, TrainDSN, TrainSRN

#: Names of the training nodes, e.g. to give them SLURM ``plugin_args``.
TRAIN_NODE_NAMES = ("train_dsn", "synthesize_pairs", "train_srn")
#: The nodes that benefit from a GPU (all three run torch networks).
GPU_NODE_NAMES = TRAIN_NODE_NAMES


def init_train_wf(
    *,
    hr_dir: str,
    lr_dir: str,
    output_dir: str,
    preset: str = "fast",
    device: str = "auto",
    use_gpu: bool | None = None,
    seed: int = 0,
    vgg19_weights: str | None = None,
    allow_random_vgg19: bool = False,
    hr_filters: dict | None = None,
    lr_filters: dict | None = None,
    hr_participant_label: list[str] | None = None,
    lr_participant_label: list[str] | None = None,
    iterations_dsn: int | None = None,
    iterations_srn: int | None = None,
    batch_size: int | None = None,
    patch_size: int | None = None,
    omp_nthreads: int = 1,
    mem_gb: float = 8.0,
    model_name: str | None = None,
    dsn_time_limit: float | None = None,
    srn_time_limit: float | None = None,
    init_generator: str | None = None,
    name: str = "train_wf",
):
    """Train a DDASR model (DSN, synthetic pairs, SRN) and write a model bundle.

    Three nodes; the two training stages keep their checkpoints in a stage folder next to their node
    directory (:mod:`ddasr_nipype.interfaces.training`), which survives nipype's rerun of a failed node:
    ``train_dsn`` prepares the unpaired HR/LR slices and trains the down-sampling network;
    ``synthesize_pairs`` degrades every HR slice with it into (LR, HR) pairs (float32, lossless);
    ``train_srn`` trains the generator against the attention U-Net discriminator and writes the
    bundle (EMA generator + DSN) to ``output_dir``.

    Every training node has ``n_procs = omp_nthreads`` and ``mem_gb`` set, and ``use_gpu`` (default:
    ``device != "cpu"``), so nipype's MultiProc plugin counts GPU slots. To route the nodes to a GPU
    partition with the ``SLURMGraph`` plugin, give them per-node ``plugin_args``::

        wf = init_train_wf(hr_dir=..., lr_dir=..., output_dir=..., preset="paper", device="cuda",
                           dsn_time_limit=20 * 3600, srn_time_limit=46 * 3600)
        for node_name in GPU_NODE_NAMES:  # ("train_dsn", "synthesize_pairs", "train_srn")
            node = wf.get_node(node_name)
            node.plugin_args = {"sbatch_args": "--gres=gpu:1 -p gpu --time=48:00:00", "overwrite": True}
        wf.run(plugin="SLURMGraph", plugin_args={"dont_resubmit_completed_jobs": True})

    The time limits end each stage, checkpointed, before the job's wall time: SLURM's
    ``--signal=B:TERM`` would reach only the batch shell of a SLURMGraph job, not its Python process
    (docs/hpc.md). A node that fails (a crash, or SIGTERM when run interactively) resumes from its last
    checkpoint when the workflow runs again (same ``base_dir`` and inputs).

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from ddasr_nipype.workflows.train import init_train_wf
            wf = init_train_wf(hr_dir=".", lr_dir=".", output_dir="model")

    Parameters
    ----------
    hr_dir, lr_dir : :obj:`str`
        BIDS datasets of real HR and real LR T1w scans (unpaired).
    output_dir : :obj:`str`
        Model bundle directory to write.
    preset : :obj:`str`
        ``paper``, ``fast``, ``smoke`` or the path of a preset YAML file.
    device : :obj:`str`
        ``auto``, ``cpu`` or ``cuda``.
    use_gpu : :obj:`bool` or None
        Mark the training nodes as GPU nodes (default: ``device != "cpu"``).
    seed : :obj:`int`
        Seed of every random draw.
    vgg19_weights : :obj:`str` or None
        VGG19 weights file (else ``$DDASR_VGG19_WEIGHTS`` or the torch hub cache).
    allow_random_vgg19 : :obj:`bool`
        Explicit opt-in to a seeded random VGG19 when no weights file is found.
    hr_filters, lr_filters : :obj:`dict` or None
        pybids filters of the T1w queries.
    hr_participant_label, lr_participant_label : :obj:`list` of :obj:`str` or None
        Subjects to use.
    iterations_dsn, iterations_srn, batch_size, patch_size : :obj:`int` or None
        Overrides of the preset.
    omp_nthreads : :obj:`int`
        CPU threads per training node (``n_procs``).
    mem_gb : :obj:`float`
        Memory estimate of each training node.
    model_name : :obj:`str` or None
        Name recorded in the bundle.
    dsn_time_limit, srn_time_limit : :obj:`float` or None
        End that stage after this many seconds (checkpointed; the bundle records the iterations done
        of those planned), so a job with a fixed allocation still ends with a model.
    init_generator : :obj:`str` or None
        Fine-tune this bundle's generator (a bundle directory) instead of starting from random weights.
    name : :obj:`str`
        Name of the workflow.

    Inputs
    ------
    hr_dir, lr_dir
        The two BIDS datasets (preset from the parameters of the same names).

    Outputs
    -------
    bundle_dir
        The model bundle.
    generator_sha256
        sha256 of the bundle's generator weights.
    dsn_checkpoint
        Final DSN checkpoint.
    pairs_file
        The synthetic (LR, HR) pairs.
    dsn_log, srn_log
        CSV training logs.

    Examples
    --------
    >>> wf = init_train_wf(hr_dir=".", lr_dir=".", output_dir="model", preset="smoke")
    >>> [wf.get_node(n).name for n in TRAIN_NODE_NAMES]
    ['train_dsn', 'synthesize_pairs', 'train_srn']
    >>> wf.get_node("train_srn").n_procs, wf.get_node("train_srn").mem_gb
    (1, 8.0)
    """
    if use_gpu is None:
        use_gpu = device != "cpu"
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        "A DDASR model was trained with *ddasr-nipype*: a transformer down-sampling network (DSN) "
        "learned the degradation of the real low-resolution scans from unpaired high- and "
        "low-resolution slices, synthesized low-resolution versions of every high-resolution slice, "
        "and a GAN super-resolution network (RRDB generator, attention U-Net discriminator, "
        f"multi-layer perceptual loss) was trained on those pairs (preset `{preset}`).\n"
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["hr_dir", "lr_dir"]), name="inputnode")
    inputnode.inputs.hr_dir = hr_dir
    inputnode.inputs.lr_dir = lr_dir
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["bundle_dir", "generator_sha256", "dsn_checkpoint", "pairs_file",
                                      "dsn_log", "srn_log"]),
        name="outputnode",
    )

    common = {"preset": preset, "seed": seed, "device": device, "use_gpu": use_gpu,
              "num_threads": omp_nthreads}
    overrides = {k: v for k, v in {"iterations_dsn": iterations_dsn, "iterations_srn": iterations_srn,
                                   "batch_size": batch_size, "patch_size": patch_size}.items() if v is not None}
    vgg = {"allow_random_vgg19": allow_random_vgg19}
    if vgg19_weights:
        vgg["vgg19_weights"] = vgg19_weights

    dsn_inputs = {**common, **overrides, **vgg}
    for key, value in (("hr_filters", hr_filters), ("lr_filters", lr_filters),
                       ("hr_participant_label", hr_participant_label),
                       ("lr_participant_label", lr_participant_label)):
        if value:
            dsn_inputs[key] = value
    if dsn_time_limit is not None:
        dsn_inputs["time_limit"] = dsn_time_limit
    train_dsn = pe.Node(TrainDSN(**dsn_inputs), name="train_dsn", n_procs=omp_nthreads, mem_gb=mem_gb)
    synthesize_pairs = pe.Node(SynthesizePairs(**common, **overrides), name="synthesize_pairs",
                               n_procs=omp_nthreads, mem_gb=mem_gb)
    srn_inputs = {**common, **overrides, **vgg, "out_dir": str(output_dir)}
    if model_name:
        srn_inputs["model_name"] = model_name
    if srn_time_limit is not None:
        srn_inputs["time_limit"] = srn_time_limit
    if init_generator:
        srn_inputs["init_generator"] = init_generator
    train_srn = pe.Node(TrainSRN(**srn_inputs), name="train_srn", n_procs=omp_nthreads, mem_gb=mem_gb)

    workflow.connect([
        (inputnode, train_dsn, [("hr_dir", "hr_dir"), ("lr_dir", "lr_dir")]),
        (train_dsn, synthesize_pairs, [("hr_slices", "hr_slices"), ("lr_slices", "lr_slices"),
                                       ("dsn_checkpoint", "dsn_checkpoint")]),
        (synthesize_pairs, train_srn, [("pairs_file", "pairs_file")]),
        (train_dsn, train_srn, [("data_summary", "data_summary"), ("dsn_checkpoint", "dsn_checkpoint")]),
        (train_srn, outputnode, [("bundle_dir", "bundle_dir"), ("generator_sha256", "generator_sha256"),
                                 ("out_log", "srn_log")]),
        (train_dsn, outputnode, [("dsn_checkpoint", "dsn_checkpoint"), ("out_log", "dsn_log")]),
        (synthesize_pairs, outputnode, [("pairs_file", "pairs_file")]),
    ])
    return workflow
