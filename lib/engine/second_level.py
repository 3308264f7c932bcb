"""Second-level (random-effects) maps across subjects: nilearn's permutation inference on
Fisher-z brain-score maps, voxelwise with TFCE on a volume, vertexwise on a mesh."""
from __future__ import annotations

import warnings

import numpy as np


def random_effects_map(zmaps: np.ndarray, mask_img, n_perm: int = 1000, tfce: bool = True,
                       seed: int = 0, two_sided: bool = False) -> dict:
    """Second-level one-sample test across subjects (nilearn's ``non_parametric_inference``: sign
    flipping, max-statistic FWE correction; TFCE when asked).

    Parameters
    ----------
    zmaps : array (n_subjects, n_targets)
        Fisher-z brain scores inside the mask, or their differences between two models.
    mask_img : Nifti1Image or None
        The volume's mask; None for targets without a volume (mesh vertices), tested by
        nilearn's ``permuted_ols`` (sign flips, max-t FWE; no TFCE).
    n_perm : int
        Permutations.
    tfce : bool
        Also the TFCE statistic (volumes).
    seed : int
        Seeds the permutations.
    two_sided : bool
        Test differences two-sided (voxels where fine-tuning hurts must be able to appear).

    Returns
    -------
    dict
        Arrays over the mask: the t map and FWE-corrected ``-log10 p`` maps (voxel level, and
        TFCE when computed); two-sided maps are signed by the effect.
    """
    if mask_img is None:
        from nilearn.mass_univariate import permuted_ols

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = permuted_ols(np.ones((len(zmaps), 1)), np.nan_to_num(zmaps), model_intercept=False,
                               n_perm=n_perm, two_sided_test=two_sided, random_state=seed,
                               output_type="dict")
        return {"t": out["t"][0].astype(np.float32),
                "logp_max_t": out["logp_max_t"][0].astype(np.float32)}
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    mask = np.asarray(mask_img.get_fdata()) > 0
    imgs = []
    for m in zmaps:
        vol = np.zeros(mask.shape, np.float32)
        vol[mask] = np.nan_to_num(m)
        imgs.append(nib.Nifti1Image(vol, mask_img.affine))
    design = pd.DataFrame({"intercept": np.ones(len(imgs))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = non_parametric_inference(imgs, design_matrix=design, mask=mask_img, n_perm=n_perm,
                                       two_sided_test=two_sided, random_state=seed, tfce=tfce,
                                       threshold=None)
    res = {}
    for k, img in (out.items() if isinstance(out, dict) else [("logp_max_t", out)]):
        res[k] = np.asarray(img.get_fdata())[mask].astype(np.float32)
    return res
