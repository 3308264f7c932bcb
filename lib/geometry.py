"""Where stage 05's targets live: voxels of a volume (a NIfTI brain mask) or vertices of a
cortical mesh (:class:`lib.surface.SurfaceMask`), their ROIs, and their maps.

Everything downstream of the responses (fits, nulls, ceilings, summaries) works on arrays of
targets; only this module and the plots know whether a target is a voxel or a vertex. A job
stores its geometry next to its outputs: ``mask.nii.gz`` (volume) or ``mask.npz`` (surface), and
its ROIs as ``roi_labels.nii.gz`` (one volume per ROI) or ``roi_labels.npz`` (``membership``:
ROIs x vertices).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .surface import SurfaceMask


def is_surface(geometry) -> bool:
    return isinstance(geometry, SurfaceMask)


def mask_array(geometry) -> np.ndarray:
    """The boolean mask (3-D for a volume, 1-D over both hemispheres for a surface)."""
    if is_surface(geometry):
        return geometry.mask
    return np.asarray(geometry.get_fdata()) > 0


def n_targets(geometry) -> int:
    return int(mask_array(geometry).sum())


def unit_name(geometry) -> str:
    return "vertices" if is_surface(geometry) else "voxels"


def save_geometry(geometry, out_dir) -> Path:
    from .cache import save_nifti

    if is_surface(geometry):
        return geometry.save(Path(out_dir) / "mask.npz")
    return save_nifti(geometry, Path(out_dir) / "mask.nii.gz")


def load_geometry(path):
    """A saved geometry: ``mask.npz`` / ``mask.nii.gz``, or the folder holding one."""
    import nibabel as nib

    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("mask.npz", "mask.nii.gz") if (path / n).exists()),
                    path / "mask.nii.gz")
    if not path.exists():
        raise DataError(f"{path}: mask not found (run stage 05 first)")
    return SurfaceMask.load(path) if path.suffix == ".npz" else nib.load(str(path))


def volume_image(vec: np.ndarray, geometry):
    """Values over a volume's mask -> a NIfTI image (0 outside the mask)."""
    import nibabel as nib

    mask = mask_array(geometry)
    vol = np.zeros(mask.shape, np.float32)
    vol[mask] = np.nan_to_num(np.asarray(vec, np.float32))
    return nib.Nifti1Image(vol, geometry.affine)


def save_map(vec: np.ndarray, geometry, path) -> Path:
    """Values over the mask -> a NIfTI (volume) or a GIfTI pair ``<stem>_hemi-{L,R}.func.gii``
    (surface; the left file is returned)."""
    if is_surface(geometry):
        return geometry.save_map(vec, path)[0]
    from .cache import save_nifti

    return save_nifti(volume_image(vec, geometry), path)


# --------------------------------------------------------------------------- masks and ROIs
def _synthetic_truth(manifest) -> Path | None:
    first = Path(manifest.iloc[0]["bold_path"])
    return next((p / "derivatives" / "synthetic-truth" for p in first.parents
                 if (p / "derivatives" / "synthetic-truth").exists()), None)


def _surface_runs(manifest) -> bool:
    kinds = set(manifest["responses"]) if "responses" in manifest else {"nifti"}
    if "gifti" in kinds and kinds != {"gifti"}:
        raise DataError("the manifest mixes surface (GIfTI) and volume runs; model one kind")
    return kinds == {"gifti"}


def brain_mask(manifest, mask: str | None = "auto"):
    """The targets' geometry. Volumes: a mask path, or ``auto`` = the dataset's own brain mask
    when it ships one (narratives-mini), else nilearn's MNI152 brain mask resampled to the BOLD
    grid. Surfaces: a saved ``mask.npz``, or ``auto`` = the vertices that vary in every
    subject's first run (:meth:`SurfaceMask.from_runs`)."""
    import nibabel as nib

    if _surface_runs(manifest):
        if mask and mask != "auto":
            return load_geometry(mask)
        first = manifest[~manifest["excluded"]].groupby("subject").bold_path.first()
        return SurfaceMask.from_runs(first.tolist())
    if mask and mask != "auto":
        if not Path(mask).exists():
            raise DataError(f"{mask}: mask file not found")
        return nib.load(str(mask))
    truth = _synthetic_truth(manifest)
    if truth is not None:
        return nib.load(str(truth / "brain_mask.nii.gz"))
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import index_img, resample_to_img

    ref = index_img(str(manifest.iloc[0]["bold_path"]), 0)
    return resample_to_img(load_mni152_brain_mask(), ref, interpolation="nearest",
                           force_resample=True, copy_header=True)


def roi_labels_for(manifest, roi_labels="auto"):
    """A labels image path, or ``auto``: the planted mask of a synthetic dataset (label 1; on a
    surface, the planted patch as a ROIs x vertices membership), none for real data."""
    if roi_labels in (None, "", "none", "None"):
        return None
    if roi_labels != "auto":
        return roi_labels
    truth = _synthetic_truth(manifest)
    if truth is None:
        return None
    if _surface_runs(manifest):
        f = truth / "surface_truth.npz"
        if not f.exists():
            return None
        with np.load(f) as z:
            return z["planted_vertices"][None, :].astype(bool)
    return truth / "planted_mask.nii.gz"


def named_rois(geometry, roi_labels=None, atlas: str | None = "harvard_oxford",
               atlas_labels: str | None = None, roi_set: str = "language", min_voxels: int = 5):
    """The stage's ROIs: the labels of ``roi_labels`` first (named by their value: the planted
    ROI of narratives-mini stays ``roi-1``), then the atlas's named ROIs on the BOLD grid
    (:func:`lib.rois.rois_on_grid`) or on the mesh (:func:`lib.surface.rois_on_surface`).
    Returns (ROIs or None, {id: name}, table): a 4-D image (a mask per volume, so ROIs may
    overlap) for a volume, a ROIs x vertices boolean array for a surface."""
    if is_surface(geometry):
        return _surface_rois(geometry, roi_labels, atlas, atlas_labels, roi_set, min_voxels)
    import nibabel as nib

    from .rois import rois_on_grid

    mask = mask_array(geometry)
    vols, names, rows = [], [], []
    if roi_labels is not None:
        lab = np.asarray(nib.load(str(roi_labels)).dataobj) if isinstance(roi_labels, (str, Path)) \
            else np.asarray(roi_labels.dataobj)
        if lab.shape[:3] != mask.shape:
            raise DataError(f"{roi_labels}: labels grid {lab.shape[:3]} != mask grid {mask.shape}")
        for v in sorted(set(np.unique(lab[mask]).astype(int)) - {0}):
            vols.append(lab == v)
            names.append(str(v))
            rows.append(dict(roi=str(v), source="labels image", n_voxels=int((vols[-1] & mask).sum()),
                             kept=True, reason=""))
    if atlas not in (None, "", "none", "None"):
        img, table = rois_on_grid(geometry, atlas, atlas_labels, roi_set, min_voxels, mask)
        grid = np.asarray(img.dataobj)
        for r in table.itertuples():
            if r.kept:
                vols.append(grid == r.value)
                names.append(r.roi)
            rows.append(dict(roi=r.roi, source=atlas, n_voxels=r.n_voxels, kept=r.kept,
                             reason=r.reason))
    table = pd.DataFrame(rows, columns=["roi", "source", "n_voxels", "kept", "reason"])
    if not vols:
        return None, {}, table
    data = np.stack(vols, -1).astype(np.uint8)
    return nib.Nifti1Image(data, geometry.affine), {i + 1: n for i, n in enumerate(names)}, table


def _surface_rois(geometry: SurfaceMask, roi_labels, atlas, atlas_labels, roi_set, min_vertices):
    from .surface import rois_on_surface

    memb, names, rows = [], [], []
    if roi_labels is not None:
        lab = np.asarray(roi_labels, bool)
        if lab.ndim != 2 or lab.shape[1] != geometry.mask.size:
            raise DataError(f"surface ROI labels of shape {lab.shape} do not match the mesh's "
                            f"{geometry.mask.size} vertices")
        for k, m in enumerate(lab):
            memb.append(m)
            names.append(str(k + 1))
            rows.append(dict(roi=str(k + 1), source="labels", n_voxels=int((m & geometry.mask).sum()),
                             kept=True, reason=""))
    if atlas not in (None, "", "none", "None"):
        m, kept, table = rois_on_surface(geometry, atlas, atlas_labels, roi_set, min_vertices)
        memb += list(m)
        names += kept
        rows += [dict(roi=r.roi, source=f"{atlas} (volume ROIs sampled onto fsaverage5)",
                      n_voxels=r.n_vertices, kept=r.kept, reason=r.reason)
                 for r in table.itertuples()]
    table = pd.DataFrame(rows, columns=["roi", "source", "n_voxels", "kept", "reason"])
    if not memb:
        return None, {}, table
    return np.array(memb, bool), {i + 1: n for i, n in enumerate(names)}, table
