"""The before/after reportlet: both layers at the same points of space, right way up, with the mask."""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ddasr_nipype.consistency import upsample_nearest
from ddasr_nipype.data.slicing import upsampled_affine
from ddasr_nipype.interfaces.reports import BeforeAfter, before_after_svg

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
OUTLINE = (255, 64, 32)


def _layers(svg: str) -> dict[str, list[np.ndarray]]:
    """The decoded images of the background (before) and foreground (after) layers, top row first."""
    root = ET.fromstring(svg)
    out = {}
    for group in root.iter(f"{SVG}g"):
        images = []
        for image in group.iter(f"{SVG}image"):
            data = base64.b64decode(image.attrib[XLINK].split(",", 1)[1])
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        out[group.attrib["class"]] = images
    return out


def _head(tmp_path, *, codes: str = "LAS"):
    """A 2 mm ellipsoid 'head' in ``codes`` orientation with texture, a bright marker at the right-
    anterior-superior end, and its nearest-neighbour x2 grid (the 'super-resolved' image, same FOV)."""
    rng = np.random.default_rng(0)
    shape = (40, 48, 44)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = (grid ** 2).sum(0) < 0.8
    data = np.where(head, 300 + 60 * rng.standard_normal(shape), 0).astype(np.float32)
    data[25:31, 30:37, 28:35] = 900  # RAS: right (+x), anterior (+y), superior (+z)
    affine_ras = np.diag([2.0, 2.0, 2.0, 1.0])
    affine_ras[:3, 3] = -np.array(shape) + 1.0
    ras = nib.Nifti1Image(data, affine_ras)
    ornt = nib.orientations.axcodes2ornt(codes)
    img = ras.as_reoriented(ornt)
    before = tmp_path / "before.nii.gz"
    nib.save(img, before)
    after_data = upsample_nearest(np.asarray(img.dataobj), (2, 2, 2))
    after = tmp_path / "after.nii.gz"
    nib.save(nib.Nifti1Image(after_data, upsampled_affine(img.affine, (2, 2, 2))), after)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((after_data > 0).astype(np.uint8), upsampled_affine(img.affine, (2, 2, 2))), mask)
    return before, after, mask


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PSR"])
def test_layers_show_the_same_points_the_right_way_up(tmp_path, codes):
    before, after, mask = _head(tmp_path, codes=codes)
    svg = before_after_svg(before, after, mask_file=mask, n_cuts=5)
    layers = _layers(svg)
    assert set(layers) == {"background-svg", "foreground-svg"}
    assert [len(v) for v in layers.values()] == [3, 3]
    # the 'after' image holds the input's own voxels on the x2 grid: both layers must match pixel for pixel
    for b, a in zip(layers["background-svg"], layers["foreground-svg"]):
        assert b.shape == a.shape
        np.testing.assert_array_equal(b, a)
    assert "Input: sagittal" in svg and "DDASR: axial" in svg and "foreground-svg:hover" in svg
    # the marker (right, anterior, superior): in the sagittal row anterior is right and superior up; in the
    # coronal and axial rows the subject's right is on the right (neurological) and superior / anterior up
    for row, pixels in enumerate(layers["foreground-svg"]):
        ys, xs = np.nonzero(_core(pixels[..., 1] == 255))  # green: the grey level (the outline is orange)
        assert ys.size, f"row {row} ({codes}): marker not shown"
        panel_width = (pixels.shape[1] + 2) // 5  # five panels, 2-pixel gaps
        assert np.ptp(xs // panel_width) == 0, f"row {row} ({codes}): marker in two panels"
        assert np.mean(xs % panel_width) > panel_width / 2, f"row {row} ({codes}): marker on the wrong side"
        assert np.mean(ys) < pixels.shape[0] / 2, f"row {row} ({codes}): marker upside down"


def _core(mask):
    """Pixels whose 3 x 3 neighbourhood is in ``mask``: the marker, not single saturated texture voxels
    (2 x 2 pixels on the x2 grid)."""
    padded = np.pad(mask, 1)
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def test_mask_outline_is_drawn_and_optional(tmp_path):
    before, after, mask = _head(tmp_path)
    with_mask = _layers(before_after_svg(before, after, mask_file=mask, n_cuts=3))["foreground-svg"][0]
    outline = np.all(with_mask == OUTLINE, axis=-1)
    assert outline.sum() > 50
    # an outline, not a filled mask: a small part of the drawn head
    assert outline.sum() < 0.2 * (with_mask.sum(-1) > 0).sum()
    # no mask file: the head's Otsu foreground stands in, the panel is still drawn
    without = _layers(before_after_svg(before, after, n_cuts=3))["foreground-svg"][0]
    assert without.shape == with_mask.shape and np.all(without == OUTLINE, axis=-1).any()


def test_node_writes_an_svg_for_a_real_scan(lr_file, tmp_path):
    img = nib.load(lr_file)
    crop = img.slicer[20:60, 30:80, 30:70]
    before = tmp_path / "in.nii.gz"
    nib.save(crop, before)
    data = np.asarray(nib.load(before).dataobj, dtype=np.float32)  # as stored (re-quantized on saving)
    up = nib.Nifti1Image(upsample_nearest(data, (1, 2, 2)), upsampled_affine(crop.affine, (1, 2, 2)))
    after = tmp_path / "sr.nii.gz"
    nib.save(up, after)
    result = BeforeAfter(before=str(before), after=str(after), n_cuts=4).run(cwd=str(tmp_path))
    svg = open(result.outputs.out_report).read()
    layers = _layers(svg)
    assert all(len(v) == 3 for v in layers.values())
    for b, a in zip(layers["background-svg"], layers["foreground-svg"]):  # after: before's own voxels
        np.testing.assert_array_equal(b, a)
    # every row drawn with the voxels' true aspect ratio (mm), whatever the grid's voxel sizes
    zooms = dict(zip("RAS", nib.affines.voxel_sizes(nib.as_closest_canonical(up).affine)))
    for element, pixels, (h, v) in zip(ET.fromstring(svg).iter(f"{SVG}image"), layers["background-svg"],
                                       [("A", "S"), ("R", "S"), ("R", "A")]):
        shown = float(element.attrib["height"]) / float(element.attrib["width"])
        assert shown == pytest.approx(pixels.shape[0] * zooms[v] / (pixels.shape[1] * zooms[h]), rel=0.01)
