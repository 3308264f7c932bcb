import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lib import compare


def test_paired_stats_matches_scipy():
    a = np.array([0.30, 0.25, 0.40, 0.35, 0.20])
    b = np.array([0.28, 0.26, 0.33, 0.30, 0.19])
    s = compare.paired_stats(a, b)
    d = a - b
    assert s["n_subjects"] == 5 and s["n_improved"] == 4
    assert s["mean_delta"] == pytest.approx(d.mean())
    assert s["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert s["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert s["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert s["ci95_low"] <= d.mean() <= s["ci95_high"]


def test_loso_selection_ignores_own_subject():
    ref = {"s1": np.array([1.0, 0, 0, 0]), "s2": np.array([0, 1.0, 0, 0]),
           "s3": np.array([0, 1.0, 0, 0])}
    tgt = {k: np.array([10.0, 20.0, 30.0, 40.0]) for k in ref}
    out = compare.loso_top_mean(ref, tgt, frac=0.25)
    assert out["s1"] == 20.0      # chosen by s2+s3, not by s1's own peak at voxel 0
    assert out["s2"] in (10.0, 20.0)


def test_contrast_table_runs_averaged_within_subject():
    rows = []
    for sub, base in [("a", 0.1), ("b", 0.2), ("c", 0.3)]:
        for run, noise in [(1, 0.0), (2, 0.02)]:
            rows.append(dict(subject=sub, condition="raw", target="whole_brain_mean",
                             brain_score=base + noise))
            rows.append(dict(subject=sub, condition="sft", target="whole_brain_mean",
                             brain_score=base + noise + 0.05))
    tab = pd.DataFrame(rows).groupby(["subject", "condition", "target"],
                                     as_index=False)["brain_score"].mean()
    deltas, st = compare.contrast_table(tab)
    assert len(deltas) == 3 and np.allclose(deltas.delta, 0.05)
    row = st.set_index("contrast").loc["sft - raw"]
    assert row.n_subjects == 3 and row.n_improved == 3 and row.mean_delta == pytest.approx(0.05)


def test_voxel_delta_summary():
    d = {"a": np.array([0.1, -0.1, 0.2, np.nan]), "b": np.array([0.0, 0.1, 0.1, 0.1])}
    s = compare.voxel_delta_summary(d, np.array([True, True, False, False]))
    a = s.set_index("subject").loc["a"]
    assert a.n_voxels == 3 and a.n_improved == 2 and a.n_improved_significant == 1
