"""Stage 05 as units: planted recovery, caching, failures, repeats, group tests."""
import warnings

import numpy as np
import pytest

from lib import encoding, stage05, units
from lib.engine import ridge
from lib.synthetic import load_truth, make_mini

from conftest import stage05_job as _job


def test_planted_voxels_recovered_on_mini(mini):
    """Default folds on the synthetic mini with the generating features (the HRF-convolved
    regressors): planted voxels found (AUC >= 0.95) and their recovered r within 0.03 of the r
    the generator realised between signal and BOLD (mean over subjects; each within 0.04) --
    scored like the brain score (mean over the same test blocks of the per-block r: slow noise
    inflates a whole-run r's denominator). What remains is estimation loss with two correlated
    regressors and noise as smooth as real BOLD (docs/validity.md)."""
    from sklearn.metrics import roc_auc_score

    from lib.data import load_bold

    t = load_truth(mini)
    lo, hi = t["kept_trs"]["pieman"]
    X = t["regressors"][lo:hi]
    aucs, gaps = [], []
    for i, sub in enumerate(t["subjects"]):
        Y = load_bold(mini / f"{sub}/func/{sub}_task-pieman_run-1_bold.nii.gz",
                      t["brain_mask_img"])[lo:hi]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ridge.fit_score(X, Y, None, ridge.Splitter.for_delays((0,), 1.5))     # already HRF-convolved: no delays
        aucs.append(roc_auc_score(t["planted_in_mask"], res.scores))
        sig = X @ t["subject_weights"][i]
        pl = Y[:, t["planted_in_mask"]]
        folds = ridge.blocked_folds(ridge.Layout.single(len(X), "sim"), 5, ridge.default_gap((0,), 1.5))
        realised = np.mean([ridge.np_pearson(sig[te], pl[te]) for _, te in folds], 0)
        gaps.append(np.mean(res.scores[t["planted_in_mask"]]) - realised.mean())
    assert min(aucs) >= 0.95, aucs
    assert abs(np.mean(gaps)) <= 0.03 and np.max(np.abs(gaps)) <= 0.04, gaps


# --------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def stage(mini, paths, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage05")
    job = _job(mini, run_dir, paths, n_perm=1000)
    res = stage05.run_stage(job, fdr_q=0.05, progress=False)
    return job, res


def test_stage_outputs(stage, mini):
    job, res = stage
    sc = res["scores"]
    assert set(sc.condition) == {"raw", "word_rate"} and set(sc.subject) == {
        "sub-001", "sub-002", "sub-003"}
    roi = sc[(sc.target == "roi-1") & (sc.condition == "raw")]
    assert (roi.brain_score > 0.25).all() and (roi.chance_score.abs() < 0.2).all()
    assert "gap 30 TRs" in sc.fold_scheme.iloc[0] and (sc.gap == 30).all()
    gt = res["group_tests"].set_index("target")
    assert gt.loc["roi-1", "p_value"] < 0.05 and gt.loc["roi-1", "n_subjects"] == 3
    nc = res["noise_ceiling"]
    assert set(nc.ceiling_kind) == {"isc_loso_spearman_brown"} and (nc.n_subjects == 3).all()
    g = res["group"]["raw"]
    planted = load_truth(mini)["planted_in_mask"]
    assert g["fdr"][planted].mean() > 0.5 and g["fdr"][~planted].mean() < 0.01


def test_rerun_computes_no_unit_and_fdr_q_reaches_the_maps(stage):
    job, res = stage
    again = stage05.run_stage(job, fdr_q=0.5, progress=False)
    assert set(again["units"].status) == {"cached"}
    assert again["group"]["raw"]["fdr"].sum() > res["group"]["raw"]["fdr"].sum()
    np.testing.assert_array_equal(again["group"]["raw"]["p"], res["group"]["raw"]["p"])


def test_corrupt_bold_fails_its_unit_only(mini, paths, tmp_path):
    import shutil

    root = tmp_path / "bids"
    shutil.copytree(mini, root)
    run_dir = tmp_path / "run"
    job = _job(root, run_dir, paths, n_perm=0)
    bad = root / "sub-002/func/sub-002_task-pieman_run-1_bold.nii.gz"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(units.UnitsFailed, match=r"sub-002: .*sub-002_task-pieman_run-1_bold"):
        stage05.run_stage(job, progress=False)
    for sub in ("sub-001", "sub-003"):
        assert job.result_path("raw", 0, sub).exists()
    assert not job.result_path("raw", 0, "sub-002").exists()


def test_repeated_hearings_scored_separately(paths, tmp_path):
    """Two hearings of pieman: folds hold each block out of both, every run gets its own score,
    and the repeat gives a within-subject ceiling."""
    root = make_mini(tmp_path / "bids", resolution_mm=12, subjects=["sub-002", "sub-003"], runs=2,
                     paths=paths)
    job = _job(root, tmp_path / "run", paths, n_perm=0)
    res = stage05.run_stage(job, progress=False)
    sc = res["scores"]
    assert sorted(sc.run.unique()) == [1, 2]
    r = sc[(sc.target == "roi-1") & (sc.condition == "raw")]
    assert len(r) == 4 and (r.brain_score > 0.2).all()
    assert "repeat_run1_run2" in set(res["noise_ceiling"].ceiling_kind)


def test_a_product_flag_is_dropped_only_when_every_prediction_is_finite():
    """OpenBLAS may leave FE_INVALID set on finite products; a unit's record keeps numpy's
    matmul warning only when a prediction really was NaN or inf (then concat_r is not finite)."""
    from types import SimpleNamespace

    def caught(*msgs):
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            for m, cat in msgs:
                warnings.warn(m, cat)
        return ws

    ws = caught(("invalid value encountered in matmul", RuntimeWarning),
                ("30% of alpha choices are at the edge", UserWarning))
    ok = SimpleNamespace(concat_r=np.array([0.1, np.nan, 0.2]), valid=np.array([1, 0, 1], bool))
    bad = SimpleNamespace(concat_r=np.array([0.1, 0.3, np.nan]), valid=np.array([1, 1, 1], bool))
    assert encoding._meaningful(ws, ok) == ["30% of alpha choices are at the edge"]
    assert encoding._meaningful(ws, bad) == ["invalid value encountered in matmul",
                                             "30% of alpha choices are at the edge"]
