"""Probe: how much of the paired gain on k-space-truncated LR needs no learning at all?

    python scripts/probes/sinc_interpolation.py HR_T1W.nii.gz [DEGRADATION,...]

Zero-filled k-space interpolation (sinc interpolation on the field-of-view preserving grid: it restores
exactly the frequencies ``degradations.kspace_truncation`` keeps, up to the Nyquist bin of even sizes,
and nothing else) scored as scripts/quick_paired_check.py scores bundles (every 4th sagittal slice with
brain, PSNR minus bicubic up-sampling of the same LR). What a super-resolution network gains beyond it
on k-space-truncated LR are frequencies the LR does not hold. The model card's 2.5D section quotes it
on sub-otsu.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from quick_paired_check import check, print_rows  # noqa: E402


def zero_fill(x: np.ndarray, scale: int = 2) -> np.ndarray:
    """Sinc up-sampling of one LR slice by ``scale``: its spectrum zero-padded, phase-shifted back to
    the field-of-view preserving grid (what ``kspace_truncation`` shifted), intensities kept."""
    spectrum = np.fft.fft2(x)
    for axis in (0, 1):
        m = x.shape[axis]
        n = scale * m
        centred = np.fft.fftshift(spectrum, axes=axis)
        start = n // 2 - m // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (start, n - m - start)
        spectrum = np.fft.ifftshift(np.pad(centred, pad), axes=axis) * (n / m)
        shift = 0.5 * n / m - 0.5
        ramp = np.exp(-2j * np.pi * np.fft.fftfreq(n) * shift)
        spectrum = spectrum * ramp.reshape([-1 if a == axis else 1 for a in range(2)])
    return np.fft.ifft2(spectrum).real.astype(np.float32)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    degradations = tuple(argv[1].split(",")) if len(argv) > 1 else ("kspace", "kspace-rician", "bicubic")
    rows = check(Path(argv[0]), [], degradations=degradations, slice_step=4, threads=2,
                 cache_dir=REPO / "out" / "masks", runners={"zero-filled k-space": zero_fill})
    print_rows(rows, width=22)
    return 0


if __name__ == "__main__":
    sys.exit(main())
