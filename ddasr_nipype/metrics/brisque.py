"""BRISQUE, the Blind/Referenceless Image Spatial Quality Evaluator, with the LIVE-trained model.

Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in the Spatial Domain",
IEEE Transactions on Image Processing 21(12), 2012.

The model (``resources/brisque/``: the LIVE epsilon-SVR ``svm.txt`` and the feature ranges that
scale its inputs) is the one the ``brisque`` PyPI package 0.2.0 ships (Apache-2.0, see the NOTICE
file beside it). The SVR was trained on features computed by that package's code, so its features
are the consistent input: :func:`brisque_features` computes them step for step as the package does,
and :func:`brisque` evaluates the SVR as libsvm does. This replaces the package itself, whose
feature scaling fails on numpy >= 2.4 (it converts one-element arrays with ``float()``) and which
needs a C++ compiler at install time (libsvm has no wheels). The scores are bit-identical to the
package's with numpy 2.3.5 (the pinned one) and 1.26.4; with numpy 2.4.6, where the package fails,
they equal its numpy 2.3.5 scores (``scripts/probes/brisque_values.py``). BRISQUE itself depends on
rounding where MSCN coefficients are near zero (flat areas: their sign picks the side of the
asymmetric fit), so an image's score may move by a few hundredths (0.3 on an image with large flat
areas) from one numpy release to another, the package's as well.

On the five calibration images (grayscale made the MATLAB way) the scores are within +0.3, +1.1,
+0.4, +3.7 and +17.6 points of the original MATLAB BRISQUE (``tests/test_metrics.py`` measures
this). BRISQUE implementations disagree by several points: compare methods only with scores
computed by the same code in the same run.

Steps, for each of two scales (the image, then its bicubic half made by OpenCV's ``resize``):
mean-subtracted contrast-normalized (MSCN) coefficients with a 7x7 Gaussian window (sigma 7/6,
zero padding); an asymmetric generalized Gaussian fitted by moment matching to the MSCN
coefficients (2 features: shape, variance) and to their products with the horizontal, vertical and
two diagonal neighbours (4 features each: shape, mean, left and right variance). The 36 features
are scaled to ``[-1, 1]`` with the model's ranges and fed to the RBF support-vector regressor.

The input is a 2D grayscale image on the 8-bit scale ``[0, 255]``; it is rounded to ``uint8``
(MR slices: see :func:`ddasr_nipype.metrics.to_8bit`). Lower is better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["brisque", "brisque_features", "load_brisque_model", "BrisqueModel", "MIN_SIZE"]

MIN_SIZE = 16  #: the smallest image edge BRISQUE scores
N_FEATURES = 36
_WINDOW_SIZE = 7
_WINDOW_SIGMA = 7 / 6
_C = 1 / 255  # stabilizes the MSCN division (the package's constant, on the [0, 1] scale)


@dataclass(frozen=True)
class BrisqueModel:
    """An epsilon-SVR with an RBF kernel (a libsvm model) and the ranges that scale its input."""

    support_vectors: np.ndarray  #: (n_sv, 36)
    coefficients: np.ndarray  #: (n_sv,) the dual coefficients
    rho: float
    gamma: float  #: RBF kernel ``exp(-gamma * |x - sv|^2)``
    feature_min: np.ndarray  #: (36,)
    feature_max: np.ndarray  #: (36,)

    def scale(self, features: np.ndarray) -> np.ndarray:
        """Scale raw features to ``[-1, 1]`` with the training set's ranges (not clipped)."""
        return -1 + (2.0 / (self.feature_max - self.feature_min) * (features - self.feature_min))

    def predict(self, scaled: np.ndarray) -> float:
        """The SVR's output for a scaled feature vector, summed in libsvm's order with the C library's exp."""
        sq_dist = np.zeros(len(self.support_vectors))
        for j in range(scaled.shape[0]):  # feature by feature, as libsvm's sparse dot product
            sq_dist += (scaled[j] - self.support_vectors[:, j]) ** 2
        total = 0.0
        for coef, dist in zip(self.coefficients.tolist(), sq_dist.tolist()):
            total += coef * math.exp(-self.gamma * dist)
        return total - self.rho


def _read_libsvm_model(text: str) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Header, dense support vectors and coefficients of a libsvm model file (one-class output)."""
    lines = [line.strip() for line in text.splitlines()]
    if "SV" not in lines:
        raise ValueError("not a libsvm model file: no 'SV' line")
    start = lines.index("SV")
    header = dict(line.partition(" ")[::2] for line in lines[:start])
    rows = [line.split() for line in lines[start + 1:] if line]
    if len(rows) != int(header.get("total_sv", -1)):
        raise ValueError(f"libsvm model: {len(rows)} support vectors, header says {header.get('total_sv')}")
    coefficients = np.array([float(row[0]) for row in rows])
    support_vectors = np.zeros((len(rows), N_FEATURES))
    for i, row in enumerate(rows):
        for item in row[1:]:
            index, _, value = item.partition(":")
            support_vectors[i, int(index) - 1] = float(value)
    return header, support_vectors, coefficients


@lru_cache(maxsize=1)
def load_brisque_model() -> BrisqueModel:
    """The LIVE BRISQUE model shipped in ``ddasr_nipype/resources/brisque``."""
    folder = resources.files("ddasr_nipype") / "resources" / "brisque"
    header, support_vectors, coefficients = _read_libsvm_model((folder / "svm.txt").read_text())
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"BRISQUE model: expected an epsilon_svr with an rbf kernel, got {header}")
    ranges = json.loads((folder / "feature_range.json").read_text())
    return BrisqueModel(
        support_vectors=support_vectors,
        coefficients=coefficients,
        rho=float(header["rho"]),
        gamma=float(header["gamma"]),
        feature_min=np.array(ranges["min"], dtype=np.float64),
        feature_max=np.array(ranges["max"], dtype=np.float64),
    )


def _gaussian_window(n: int, sigma: float) -> np.ndarray:
    y, x = np.indices((n, n)) - int(n / 2)
    window = 1 / (2 * np.pi * sigma ** 2) * np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    return window / np.sum(window)


def _mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalized coefficients (zero padding, as the package)."""
    from scipy.signal import convolve2d

    window = _gaussian_window(_WINDOW_SIZE, _WINDOW_SIGMA)
    mu = convolve2d(image, window, "same")
    sigma = np.sqrt(np.abs(mu ** 2 - convolve2d(image ** 2, window, "same")))
    return (image - mu) / (sigma + _C)


def _aggd_features(maps: list[np.ndarray]) -> list[tuple[float, float, float, float]]:
    """``(shape, mean, left variance, right variance)`` of an AGGD fitted to each map by moment matching.

    Computed as the package computes them, including which steps run on numpy scalars and which on
    arrays: numpy's scalar and vectorized ``power`` can differ in the last bit, so this keeps the
    scores bit-identical to the ones the model's authors' code gives.
    """
    from scipy import optimize, special

    def phi(alpha):
        return special.gamma(2 / alpha) ** 2 / (special.gamma(1 / alpha) * special.gamma(3 / alpha))

    # per map, on scalars: the ratio of the squared mean absolute value to the mean square
    r_hat = np.array([(np.sum(np.abs(x)) / x.size) ** 2 / (np.sum(x ** 2) / x.size) for x in maps])
    with np.errstate(divide="ignore", invalid="ignore"):  # a side without values: NaN features
        left_ms = np.array([np.sum(x[x < 0] ** 2) / np.count_nonzero(x < 0) for x in maps])
        right_ms = np.array([np.sum(x[x >= 0] ** 2) / np.count_nonzero(x >= 0) for x in maps])
        # on arrays
        ratio = np.sqrt(left_ms) / np.sqrt(right_ms)
        big_r = r_hat * ((ratio ** 3 + 1) * (ratio + 1)) / (ratio ** 2 + 1) ** 2
        sigma_l, sigma_r = np.sqrt(left_ms), np.sqrt(right_ms)
    features = []
    for i in range(len(maps)):
        alpha = optimize.root(lambda z, target=big_r[i]: phi(z) - target, [0.2]).x[0]
        constant = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
        mean = (sigma_r[i:i + 1] - sigma_l[i:i + 1]) * constant * (special.gamma(2 / alpha) / special.gamma(1 / alpha))
        features.append((float(alpha), float(mean[0]), float((sigma_l[i:i + 1] ** 2)[0]),
                         float((sigma_r[i:i + 1] ** 2)[0])))
    return features


def _scale_features(image: np.ndarray) -> list[float]:
    """The 18 features of one scale (image on ``[0, 1]``)."""
    m = _mscn(image)
    maps = [m, m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :], m[:-1, :-1] * m[1:, 1:], m[1:, :-1] * m[:-1, 1:]]
    fits = _aggd_features(maps)
    alpha, _, var_l, var_r = fits[0]
    # the MSCN map's variance: the mean of its left and right variances, on arrays as the package
    variance = float(((np.array([var_l]) + np.array([var_r])) / 2)[0])
    out = [alpha, variance]
    for fit in fits[1:]:
        out.extend(fit)
    return out


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an 8-bit grayscale image (``uint8``, at least 16 x 16)."""
    import cv2
    from skimage.color import rgb2gray

    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2D uint8 image, got {gray.dtype} of shape {gray.shape}")
    # the package's conversion to [0, 1]: rgb2gray of three equal channels, v / 255 to 1e-16
    image = rgb2gray(np.repeat(gray[..., None], 3, axis=-1))
    half = cv2.resize(image, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
    return np.array(_scale_features(image) + _scale_features(half), dtype=np.float64)


def brisque(image: np.ndarray) -> float:
    """BRISQUE score of a 2D grayscale image on the 8-bit scale ``[0, 255]`` (lower is better).

    Returns NaN for a constant image (no texture: the features are undefined) and for an image
    whose features are undefined (e.g. an MSCN map without negative values).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"BRISQUE needs a 2D grayscale image, got shape {img.shape}")
    if min(img.shape) < MIN_SIZE:
        raise ValueError(f"image of shape {img.shape} is too small for BRISQUE ({MIN_SIZE} x {MIN_SIZE} at least)")
    gray = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    if gray.min() == gray.max():
        return float("nan")
    features = brisque_features(gray)
    if not np.all(np.isfinite(features)):
        return float("nan")
    model = load_brisque_model()
    return model.predict(model.scale(features))
