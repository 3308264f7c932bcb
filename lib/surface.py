"""Responses on the cortical surface (fsaverage meshes): GIfTI runs, the vertex mask, score maps
and named ROIs.

Narratives ships cleaned, unsmoothed BOLD on fsaverage6 (``derivatives/afni-nosmooth``, one
``*_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii`` per hemisphere and run). A run is read as
TRs x vertices, left hemisphere then right; the targets are the vertices of :class:`SurfaceMask`
(those whose series varies in every run: the medial wall is constant in these derivatives).

fsaverage5's 10,242 vertices per hemisphere are the first 10,242 of fsaverage6 (icosahedral
subdivision keeps the coarser mesh's vertices first), so every fsaverage6 map is drawn on
nilearn's bundled fsaverage5 mesh by its first 10,242 vertices, offline. Named ROIs on the
surface come from the volumetric atlas ROIs of :mod:`lib.rois` sampled onto that mesh
(``vol_to_surf``, most frequent label between the white and pial surfaces): an approximation of
a surface atlas, which nilearn does not ship; on fsaverage6 data the ROI means use the fsaverage5
subset of vertices (a quarter, evenly spread).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

MESH_VERTICES = {"fsaverage5": 10242, "fsaverage6": 40962}
DRAWN_VERTICES = MESH_VERTICES["fsaverage5"]      # drawn on nilearn's bundled fsaverage5


def is_surface_path(path) -> bool:
    return str(path).endswith(".gii")


def hemi_paths(path) -> tuple[Path, Path]:
    """(left, right) files of a run named by either hemisphere (BIDS ``_hemi-L`` / ``_hemi-R``)."""
    p = str(path)
    for a, b in (("_hemi-L", "_hemi-R"), ("_hemi-R", "_hemi-L")):
        if a in p:
            left, right = (p, p.replace(a, b)) if a == "_hemi-L" else (p.replace(a, b), p)
            return Path(left), Path(right)
    raise DataError(f"{path}: a surface run needs _hemi-L / _hemi-R in its file name")


def read_hemi(path) -> np.ndarray:
    """One hemisphere's run as (TRs, vertices) float32: a GIfTI with one data array per TR (as
    Narratives' derivatives are) or one (vertices, TRs) array."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: surface BOLD file not found")
    try:
        arrays = [np.asarray(d.data, np.float32) for d in nib.load(str(path)).darrays]
    except Exception as e:
        raise DataError(f"{path}: not a readable GIfTI ({e})") from None
    if not arrays:
        raise DataError(f"{path}: the GIfTI holds no data array")
    if len(arrays) == 1 and arrays[0].ndim == 2:
        data = arrays[0].T
    elif all(a.ndim == 1 and a.shape == arrays[0].shape for a in arrays):
        data = np.stack(arrays)
    else:
        raise DataError(f"{path}: expected one vertex array per TR, or one vertices x TRs array")
    mesh_of(data.shape[1], path)
    return np.ascontiguousarray(data)


def mesh_of(n_vertices: int, path="") -> str:
    for mesh, n in MESH_VERTICES.items():
        if n == n_vertices:
            return mesh
    raise DataError(f"{path}: {n_vertices} vertices per hemisphere is not an fsaverage mesh "
                    f"({', '.join(f'{m}: {n}' for m, n in MESH_VERTICES.items())})")


def read_run(path) -> np.ndarray:
    """A run as (TRs, 2 x vertices): left hemisphere then right."""
    left, right = (read_hemi(p) for p in hemi_paths(path))
    if left.shape != right.shape:
        raise DataError(f"{path}: hemispheres differ: left {left.shape}, right {right.shape} "
                        f"(TRs, vertices)")
    return np.hstack([left, right])


def load_surface_bold(path, mask: np.ndarray | None = None) -> np.ndarray:
    """(TRs, vertices in ``mask``) of a run, float32."""
    Y = read_run(path)
    if mask is None:
        return Y
    mask = np.asarray(mask, bool)
    if mask.shape != (Y.shape[1],):
        raise DataError(f"{path}: {Y.shape[1]} vertices but the surface mask has {mask.size}")
    return np.ascontiguousarray(Y[:, mask])


def n_trs(path) -> int:
    return len(read_hemi(hemi_paths(path)[0]))


@dataclass
class SurfaceMask:
    """The vertices fitted: a boolean over both hemispheres of ``mesh`` (left then right)."""
    mesh: str
    mask: np.ndarray

    @property
    def n_per_hemi(self) -> int:
        return MESH_VERTICES[self.mesh]

    @property
    def n(self) -> int:
        return int(self.mask.sum())

    @classmethod
    def from_runs(cls, paths) -> "SurfaceMask":
        """Vertices whose series varies in every one of ``paths`` (one run per subject is
        enough: the constant ones are the medial wall)."""
        keep, mesh = None, None
        for p in paths:
            Y = read_run(p)
            mesh = mesh or mesh_of(Y.shape[1] // 2, p)
            if Y.shape[1] != 2 * MESH_VERTICES[mesh]:
                raise DataError(f"{p}: {Y.shape[1] // 2} vertices per hemisphere, other runs "
                                f"have {MESH_VERTICES[mesh]}")
            varies = Y.std(0) > 0
            keep = varies if keep is None else keep & varies
        if keep is None or not keep.any():
            raise DataError("the surface mask is empty: no vertex varies in every run")
        return cls(mesh, keep)

    def save(self, path) -> Path:
        from .cache import write_npz

        return write_npz(Path(path), mask=self.mask, mesh=np.asarray(self.mesh))

    @classmethod
    def load(cls, path) -> "SurfaceMask":
        with np.load(path) as z:
            return cls(str(z["mesh"]), z["mask"].astype(bool))

    def to_hemis(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values over the mask -> (left, right) arrays over the whole mesh, 0 elsewhere."""
        full = np.zeros(self.mask.size, np.float32)
        full[self.mask] = np.nan_to_num(np.asarray(vec, np.float32))
        return full[:self.n_per_hemi], full[self.n_per_hemi:]

    def save_map(self, vec: np.ndarray, path) -> list[Path]:
        """``<stem>_hemi-L.func.gii`` and ``..._hemi-R...`` for ``path`` (any suffix)."""
        import nibabel as nib

        from .cache import atomic_path

        stem = str(path).removesuffix(".nii.gz").removesuffix(".func.gii")
        out = []
        for hemi, data in zip(("L", "R"), self.to_hemis(vec)):
            p = Path(f"{stem}_hemi-{hemi}.func.gii")
            p.parent.mkdir(parents=True, exist_ok=True)
            img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(
                data, intent="NIFTI_INTENT_ESTIMATE", datatype="NIFTI_TYPE_FLOAT32")])
            with atomic_path(p) as tmp:
                nib.save(img, str(tmp))
            out.append(p)
        return out


def fsaverage5(kind: str = "pial"):
    """nilearn's bundled fsaverage5 mesh (``pial``, ``white_matter``, ``inflated``)."""
    from nilearn import datasets

    return datasets.load_fsaverage("fsaverage5")[kind]


def rois_on_surface(mask: SurfaceMask, atlas: str = "harvard_oxford",
                    labels_csv: str | None = None, roi_set: str = "language",
                    min_vertices: int = 5) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """(membership (n_rois, 2 x vertices) bool, ROI names, table of every ROI with its vertex
    count and whether it was kept). Each hemisphere takes its own side's ROIs; vertices beyond
    the first 10,242 (fsaverage6) belong to none (see the module docstring)."""
    from nilearn import surface as nsurf

    from .rois import atlas_files, label_image, roi_definitions

    img_path, csv = atlas_files(atlas, labels_csv)
    lab_img, names = label_image(img_path, csv)
    n = mask.n_per_hemi
    labels = {}
    for hemi, side in (("left", "L"), ("right", "R")):
        v = nsurf.vol_to_surf(lab_img, fsaverage5("pial").parts[hemi],
                              inner_mesh=fsaverage5("white_matter").parts[hemi],
                              interpolation="nearest_most_frequent")
        labels[side] = np.r_[np.rint(v).astype(int), np.zeros(n - DRAWN_VERTICES, int)]
    rows, memb, kept_names = [], [], []
    for roi, vals in roi_definitions(names, roi_set).items():
        side = roi[0] if roi[:2] in ("L_", "R_") else None
        per = {s: np.isin(labels[s], vals) & (side in (None, s)) for s in ("L", "R")}
        m = np.r_[per["L"], per["R"]] & mask.mask
        k = int(m.sum())
        kept = k >= min_vertices
        rows.append(dict(roi=roi, n_vertices=k, kept=kept,
                         reason="" if kept else f"fewer than {min_vertices} vertices"))
        if kept:
            memb.append(m)
            kept_names.append(roi)
    memb = np.array(memb, bool).reshape(len(memb), mask.mask.size)
    return memb, kept_names, pd.DataFrame(rows)
