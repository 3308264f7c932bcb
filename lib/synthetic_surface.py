"""SYNTHETIC surface BOLD for narratives-mini (``make_mini(surface="fsaverage5" | "fsaverage6")``):
the same stimulus-driven signal and smooth noise as the volumes, on a cortical mesh, written as
Narratives lays out its surface derivatives
(``derivatives/afni-nosmooth/sub-*/func/*_space-<mesh>_hemi-{L,R}_desc-clean.func.gii``).

The planted patch: vertices of nilearn's fsaverage5 pial surface within ``PATCH_MM`` of a point in
each superior temporal gyrus. Vertices near the midline (|x| < 8 mm on the pial surface) are held
constant, as the medial wall is in real derivatives. On fsaverage6 the vertices past the first
10,242 per hemisphere (no coordinates offline) carry noise only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .surface import DRAWN_VERTICES, MESH_VERTICES, fsaverage5

#: superior temporal gyrus points (MNI / fsaverage mm) and the patch radius around them
STG_POINTS = ((-60.0, -22.0, 4.0), (60.0, -18.0, 2.0))
PATCH_MM = 14.0


def surface_layout(mesh: str) -> tuple[np.ndarray, np.ndarray]:
    """(planted, medial) booleans over both hemispheres of ``mesh`` (left then right)."""
    n = MESH_VERTICES[mesh]
    planted, medial = np.zeros(2 * n, bool), np.zeros(2 * n, bool)
    for h, (hemi, point) in enumerate(zip(("left", "right"), STG_POINTS)):
        xyz = fsaverage5("pial").parts[hemi].coordinates
        d = np.linalg.norm(xyz - np.asarray(point), axis=1)
        planted[h * n:h * n + DRAWN_VERTICES] = d < PATCH_MM
        medial[h * n:h * n + DRAWN_VERTICES] = np.abs(xyz[:, 0]) < 8.0
    return planted & ~medial, medial


def save_gifti_run(Y: np.ndarray, base: Path) -> list[Path]:
    """(TRs, 2 x vertices) -> ``<base>_hemi-{L,R}_desc-clean.func.gii``, one array per TR."""
    import nibabel as nib

    n = Y.shape[1] // 2
    out = []
    for h, hemi in enumerate("LR"):
        img = nib.gifti.GiftiImage(darrays=[
            nib.gifti.GiftiDataArray(np.ascontiguousarray(row[h * n:(h + 1) * n]),
                                     intent="NIFTI_INTENT_TIME_SERIES",
                                     datatype="NIFTI_TYPE_FLOAT32") for row in Y])
        p = Path(f"{base}_hemi-{hemi}_desc-clean.func.gii")
        nib.save(img, str(p))
        out.append(p)
    return out


def surface_run(rng, sig: np.ndarray, snr: np.ndarray, planted: np.ndarray, medial: np.ndarray,
                noise_fn) -> np.ndarray:
    """One run: smooth noise everywhere, ``sqrt(snr) * sig`` added in the planted vertices, the
    medial wall constant; scaled like BOLD (1000 + 20 x)."""
    n = len(sig)
    bold = noise_fn(rng, n, planted.size)
    bold[:, planted] += np.sqrt(snr) * sig
    bold = (1000.0 + 20.0 * bold).astype(np.float32)
    bold[:, medial] = 0.0
    return bold
