import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lib import data
from lib.data import DataError


def copy_tree(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_manifest_of_mini(mini, paths):
    df = data.build_manifest(mini, stories=["pieman"], paths=paths)
    assert list(df.columns) == data.MANIFEST_COLUMNS
    assert df.subject.tolist() == ["sub-001", "sub-002", "sub-003"]
    assert (df.n_trs == 300).all() and (df.tr == 1.5).all()
    assert df.synthetic_bold.all()
    # the dataset authors exclude sub-001's pieman runs: kept in the manifest, flagged
    row = df.set_index("subject").loc["sub-001"]
    assert row.excluded and "scan_exclude.json" in row.exclusion_reason
    assert not df.set_index("subject").loc["sub-002"].excluded
    assert (df.trim_start == 16).all() and (df.trim_end == 5).all()
    assert (df.audio_start_s == 0).all()


def test_include_excluded(mini, paths):
    df = data.build_manifest(mini, stories=["pieman"], include_excluded=True, paths=paths)
    row = df.set_index("subject").loc["sub-001"]
    assert not row.excluded and row.exclusion_reason.startswith("included anyway")


def test_manifest_roundtrip(mini, paths, tmp_path):
    df = data.build_manifest(mini, stories=["pieman"], paths=paths)
    data.write_manifest(df, tmp_path / "m.csv")
    back = data.read_manifest(tmp_path / "m.csv")
    assert back.excluded.tolist() == df.excluded.tolist()
    assert back.synthetic_bold.all()


def test_mini_is_deterministic_and_labelled(mini, paths, tmp_path):
    from lib.synthetic import load_truth, make_mini

    desc = json.loads((mini / "dataset_description.json").read_text())
    assert "synthetic BOLD" in desc["Name"] and desc["Synthetic"] is True
    other = make_mini(tmp_path / "again", seed=0, resolution_mm=8,
                      subjects=["sub-001", "sub-002", "sub-003"], paths=paths)
    a = nib.load(str(mini / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz")).get_fdata()
    b = nib.load(str(other / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz")).get_fdata()
    assert np.array_equal(a, b)
    truth = load_truth(mini)
    assert truth["n_planted"] > 10 and truth["label"] == "synthetic BOLD"
    assert 0.2 < truth["mean_realised_r"] < 0.7


def test_story_timing_from_metadata(paths):
    t = data.story_timing("tunnel", paths)
    assert t.audio_start_s == 3.0 and t.onset_tr == 2 and t.duration_tr == 1023
    p = data.story_timing("pieman", paths, n_trs=300)
    assert p.audio_start_s == 0.0 and p.kept_slice(300) == slice(16, 299)  # story end for the last word


def test_trims_drop_the_onset_and_keep_the_haemodynamic_tail(mini, paths):
    """Narratives ISC convention: 6 TRs after story onset dropped; kept up to the last word's TR
    + tail_trs (pieman: onset TR 10, last word at TR 286). Both are parameters."""
    m = data.build_manifest(mini, stories=["pieman"], paths=paths)
    row = m.iloc[0]
    assert (row.trim_start, row.n_trs - row.trim_end) == (16, 295)
    m2 = data.build_manifest(mini, stories=["pieman"], paths=paths, trim_after_onset=0,
                             tail_trs=3)
    assert (m2.iloc[0].trim_start, 300 - m2.iloc[0].trim_end) == (10, 290)
    assert data.last_word_tr(mini / "stimuli/gentle/pieman/align.csv", 0.0) == 286


def test_missing_bold_file(tmp_path):
    with pytest.raises(DataError, match=r"nope_bold\.nii\.gz: BOLD file not found"):
        data.load_bold(tmp_path / "nope_bold.nii.gz")
    with pytest.raises(DataError, match="BOLD file not found"):
        data.bold_header(tmp_path / "nope_bold.nii.gz")


def test_requested_subject_without_bold(mini, paths):
    with pytest.raises(DataError, match="no raw BOLD runs for sub-009"):
        data.build_manifest(mini, subjects=["sub-002", "sub-009"], stories=["pieman"], paths=paths)


def test_truncated_nifti(mini, paths, tmp_path):
    root = copy_tree(mini, tmp_path / "bids")
    f = root / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"sub-002_task-pieman_run-1_bold\.nii\.gz: corrupt or truncated"):
        data.build_manifest(root, stories=["pieman"], paths=paths)


def test_tr_count_does_not_fit_story(mini, paths, tmp_path):
    root = copy_tree(mini, tmp_path / "bids")
    f = root / "sub-003/func/sub-003_task-pieman_run-1_bold.nii.gz"
    img = nib.load(str(f))
    short = nib.Nifti1Image(np.asarray(img.dataobj)[..., :200], img.affine, img.header)
    nib.save(short, f)
    with pytest.raises(DataError, match=r"sub-003.*200 TRs cannot hold story 'pieman'"):
        data.build_manifest(root, stories=["pieman"], paths=paths)


def test_sidecar_without_repetition_time(mini, paths, tmp_path):
    root = copy_tree(mini, tmp_path / "bids")
    (root / "task-pieman_bold.json").write_text(json.dumps({"TaskName": "pieman"}))
    with pytest.raises(DataError, match=r"task-pieman_bold\.json: sidecar has no RepetitionTime"):
        data.build_manifest(root, stories=["pieman"], paths=paths)


def test_alignment_for_story_without_bold(mini, paths, tmp_path):
    root = copy_tree(mini, tmp_path / "bids")
    g = root / "stimuli/gentle/tunnel"
    g.mkdir(parents=True)
    shutil.copy(paths.stimuli / "tunnel" / "align.csv", g / "align.csv")
    with pytest.raises(DataError, match=r"story 'tunnel' has no raw BOLD run \(alignment .*align\.csv exists\)"):
        data.build_manifest(root, stories=["pieman", "tunnel"], paths=paths)


def test_bad_inputs_leave_no_partial_manifest(mini, paths, tmp_path):
    root = copy_tree(mini, tmp_path / "bids")
    (root / "task-pieman_bold.json").write_text("{}")
    out = tmp_path / "out" / "data_manifest.csv"
    with pytest.raises(DataError):
        data.write_manifest(data.build_manifest(root, stories=["pieman"], paths=paths), out)
    assert not out.exists()


def test_load_bold_shape_and_mask(mini):
    from lib.synthetic import load_truth

    t = load_truth(mini)
    Y = data.load_bold(mini / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz",
                       t["brain_mask_img"])
    assert Y.shape == (300, t["n_voxels"]) and Y.dtype == np.float32
    with pytest.raises(DataError, match="mask is empty"):
        data.load_bold(mini / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz",
                       np.zeros(t["brain_mask_img"].shape, bool))
