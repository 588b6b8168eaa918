"""Can the LR volume itself say how it was down-sampled? A volume-level spectral statistic, per acquisition.

    python scripts/probes/acquisition_rolloff.py HR_T1W... [--sigma 0 0.02 0.04]

Each HR scan is prepared as ``ddasr-eval`` prepares it (``_heldout.load_heldout``), made x2 smaller in its
sagittal planes by several acquisitions (plain k-space truncation, Tukey-apodized, partial Fourier, a
reduced cutoff, block average, bicubic) with Rician noise of each ``--sigma``, and for each LR volume the
in-plane spectra of its sagittal slices (those at least 20 % head) are summed. Printed: the power in the top
of the LR band (0.8-0.95 of its Nyquist frequency, Chebyshev radius) over the power in 0.4-0.55, from the
slices' own spectra ("auto") and from the cross-spectrum of neighbouring slices ("cross": the noise of one
slice does not repeat in the next, so it cancels there). If that ratio told acquisitions apart across
subjects, it could tell a generator which one it faces (a conditioning input, as its noise level is).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: (top, reference) bands of the LR spectrum, in units of its Nyquist frequency
TOP_BAND = (0.8, 0.95)
REFERENCE_BAND = (0.4, 0.55)


def rolloff_ratios(lr: np.ndarray, head: np.ndarray, min_head: float = 0.2) -> tuple[float, float]:
    """``(auto, cross)``: the power of ``lr``'s slices (axis 0) in :data:`TOP_BAND` over their power in
    :data:`REFERENCE_BAND`, from the slices' spectra and from neighbouring slices' cross-spectrum, over
    the slices whose ``head`` fraction is at least ``min_head``."""
    keep = head.mean(axis=(1, 2)) >= min_head
    if keep.sum() < 2:
        raise ValueError("need at least two slices with enough head")
    spectra = np.fft.fft2(lr[keep], axes=(1, 2))
    auto = (np.abs(spectra) ** 2).mean(0)
    cross = np.real(spectra[:-1] * np.conj(spectra[1:])).mean(0)
    fy = np.abs(np.fft.fftfreq(lr.shape[1])) * 2
    fx = np.abs(np.fft.fftfreq(lr.shape[2])) * 2
    radius = np.maximum.outer(fy, fx)

    def ratio(power):
        top = (radius >= TOP_BAND[0]) & (radius < TOP_BAND[1])
        ref = (radius >= REFERENCE_BAND[0]) & (radius < REFERENCE_BAND[1])
        return float(power[top].mean() / power[ref].mean())

    return ratio(auto), ratio(cross)


def acquisitions():
    """``(name, function of an HR volume)`` of the compared x2 acquisitions in the sagittal planes."""
    from ddasr_nipype import degradations as d

    axes = (1, 2)
    yield "kspace", lambda x: d.kspace_acquisition(x, 2, axes=axes)
    yield "tukey0.3", lambda x: d.kspace_acquisition(x, 2, axes=axes, alpha=0.3)
    yield "tukey0.6", lambda x: d.kspace_acquisition(x, 2, axes=axes, alpha=0.6)
    yield "partial0.7", lambda x: d.kspace_acquisition(x, 2, axes=axes, partial_fourier=0.7)
    yield "cutoff0.85", lambda x: d.kspace_acquisition(x, 2, axes=axes, cutoff=0.85)
    yield "area", lambda x: d.area_downsample_unclipped(x, 2, axes=axes)
    yield "bicubic", lambda x: d.bicubic_downsample(np.clip(x, 0, 1), 2, axes=axes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hr", type=Path, nargs="+")
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.0, 0.02, 0.04])
    opts = parser.parse_args(argv)

    from _heldout import load_heldout

    from ddasr_nipype.degradations import area_downsample_unclipped, rician_noise

    print(f"{'scan':12s} {'acquisition':12s} {'sigma':>6s} {'auto':>8s} {'cross':>8s}")
    for path in opts.hr:
        held = load_heldout(path)
        head = area_downsample_unclipped(held.head.astype(np.float64), 2, axes=(1, 2)) > 0.5
        for name, acquire in acquisitions():
            clean = acquire(held.hr01)
            for sigma in opts.sigma:
                lr = rician_noise(clean, sigma, seed=1) if sigma > 0 else clean
                auto, cross = rolloff_ratios(lr, head)
                print(f"{held.key:12s} {name:12s} {sigma:6.3f} {auto:8.4f} {cross:8.4f}", flush=True)


if __name__ == "__main__":
    main()
