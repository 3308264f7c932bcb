"""Validity of the brain-score statistics on null data as smooth as real BOLD (run by hand; the
numbers go to docs/validity.md).

    python bench/validity.py                 # every table (about 10 minutes on 2 cores)
    python bench/validity.py --only leak     # one table: leak | null | planted

leak:    mean held-out r of features independent of BOLD, by gap and by kind of data
         (the chance level a cross-validation scheme leaves; it should be ~0);
null:    false-positive rate at p < 0.05 of the permutation null, one subject and the group
         mean of 3 subjects, by null method (block length / circular shift);
planted: recovery of the planted signal of narratives-mini with the generating regressors.
partition: unique share of a band that adds nothing (redundant: a noisy mixture of the other
         band; copy: the other band plus 10% noise; independent: unrelated smooth features)
         and of one that adds 30% of the signal, with 30 or 300 columns a band: classic, against
         the band's conditional placebo (the pipeline's test) and against the band wholly
         shifted; the across-subject test's rate of p < 0.05 (one-sided sign flips over 6
         subjects). About 50 minutes on 2 cores.
chance:  chance levels of each feature set's residual leak: one circular shift of the features
         (chance_score) against the mean of the block-permutation null (null_mean).
crossed: the headline Δ test with several fine-tuning seeds: false-positive rate and CI coverage
         of seeds averaged inside subjects (before) and of subjects x seeds as crossed random
         effects (lib/engine/crossed.py), at 5-80 subjects, 2-5 seeds, seed SD 0-1x subject SD.
"""
import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.engine import inference as inf  # noqa: E402
from lib.engine import ridge  # noqa: E402
from lib.synthetic import _ar1, realistic_noise, smooth_null_features  # noqa: E402

DELAYS = (1, 2, 3, 4, 5)



def with_null(D, Y, spec):
    """ridge.score with its permutation null plan attached (``.null_plan``)."""
    r = ridge.score(D, Y)
    r.null_plan = inf.null_plan(D, Y, r, spec)
    return r

def bold(kind, rng, n, m):
    return _ar1(rng, n, m, 0.9) if kind == "AR(0.9)" else realistic_noise(rng, n, m)


def feats(kind, rng, n):
    if kind == "AR(0.9)":
        return smooth_null_features(rng, n, phi=0.9)
    if kind == "AR(0.95)":
        return smooth_null_features(rng, n, phi=0.95)
    # white per TR, like per-unit z-scored LM features; smooth only through the delays
    return smooth_null_features(rng, n, phi=0.0)


def leak(n_sets=12):
    print("\n| features | BOLD | gap (TRs) | mean held-out r | SE |")
    print("|---|---|---|---|---|")
    for fk in ("AR(0.9)", "AR(0.95)", "white+delays"):
        for bk in ("AR(0.9)", "realistic"):
            for gap in (5, 10, 20, 30, 40):
                rs = []
                for s in range(n_sets):
                    rng = np.random.default_rng(10_000 + s)
                    X, Y = feats(fk, rng, 279), bold(bk, rng, 279, 300)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rs.append(ridge.fit_score(X, Y, None, ridge.Splitter(gap=gap)).scores.mean())
                print(f"| {fk} | {bk} | {gap} | {np.mean(rs):+.4f} | "
                      f"{np.std(rs) / np.sqrt(n_sets):.4f} |", flush=True)


def null(n_sets=4):
    print("\n| null | one subject: FPR at p<0.05 | group of 3: FPR | seconds |")
    print("|---|---|---|---|")
    specs = [("block 10 TRs", inf.NullSpec(n_perm=400, block=10)),
             ("block 20 TRs", inf.NullSpec(n_perm=400, block=20)),
             ("block 30 TRs (default)", inf.NullSpec(n_perm=400, block=30)),
             ("block 45 TRs", inf.NullSpec(n_perm=400, block=45)),
             ("circular shift >= 30 TRs", inf.NullSpec(n_perm=400, method="shift"))]
    for name, spec in specs:
        t0 = time.time()
        single, group = [], []
        for s in range(n_sets):
            rng = np.random.default_rng(20_000 + s)
            D = ridge.prepare(smooth_null_features(rng, 279), None, ridge.Splitter.for_delays(DELAYS, 1.5))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits = [with_null(D, realistic_noise(rng, 279, 600), spec)
                        for _ in range(3)]
            for r in fits:
                p = inf.permutation_test([[r.null_plan]], r.scores, spec)[1]
                single.append(np.mean(p < 0.05))
            obs = np.mean([r.scores for r in fits], 0)
            p = inf.permutation_test([[r.null_plan] for r in fits], obs, spec)[1]
            group.append(np.mean(p < 0.05))
        print(f"| {name} | {np.mean(single):.3f} | {np.mean(group):.3f} | "
              f"{time.time() - t0:.0f} |", flush=True)


def planted():
    import os
    import tempfile

    os.environ.setdefault("NARRATIVES_ROOT", tempfile.mkdtemp())
    from lib.data import load_bold
    from lib.synthetic import load_truth, make_mini

    root = make_mini(Path(os.environ["NARRATIVES_ROOT"]) / "mini", resolution_mm=8,
                     subjects=["sub-001", "sub-002", "sub-003"])
    t = load_truth(root)
    lo, hi = t["kept_trs"]["pieman"]
    X = t["regressors"][lo:hi]
    print("\n| gap | recovered r (planted voxels) | oracle r, same blocks | difference |")
    print("|---|---|---|---|")
    for gap in (5, 25):
        rec, orc = [], []
        for i, sub in enumerate(t["subjects"]):
            Y = load_bold(root / f"{sub}/func/{sub}_task-pieman_run-1_bold.nii.gz",
                          t["brain_mask_img"])[lo:hi][:, t["planted_in_mask"]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec.append(ridge.fit_score(X, Y, None, ridge.Splitter(gap=gap)).scores.mean())
            sig = X @ t["subject_weights"][i]
            folds = ridge.blocked_folds(ridge.Layout.single(len(X), "sim"), 5, gap)
            orc.append(np.mean([ridge.np_pearson(sig[te], Y[te]) for _, te in folds]))
        print(f"| {gap} | {np.mean(rec):.4f} | {np.mean(orc):.4f} | "
              f"{np.mean(rec) - np.mean(orc):+.4f} |")


def crossed(n_rep=4000):
    """Δ tables (subjects x seeds) with no true Δ: subject SD 0.004 r, a model (seed) effect of
    ``seed_sd`` x that, a residual of 0.5x (a subject's own estimation noise per model)."""
    from scipy import stats

    from lib.engine.crossed import crossed_test

    print("\n| subjects | seeds | seed SD / subject SD | FPR seeds averaged (before) | "
          "FPR crossed | coverage crossed |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for S, M, sd in [(80, 3, 0.5), (80, 3, 0.0), (80, 3, 1.0), (80, 5, 0.5), (14, 3, 0.0),
                     (14, 3, 0.3), (14, 3, 0.6), (5, 3, 0.5), (6, 2, 0.3)]:
        D = 0.004 * (rng.standard_normal((n_rep, S, 1)) + sd * rng.standard_normal((n_rep, 1, M))
                     + 0.5 * rng.standard_normal((n_rep, S, M)))
        old = np.mean(stats.ttest_1samp(D.mean(2), 0, axis=1).pvalue < 0.05)
        res = [crossed_test(d) for d in D]
        fpr = np.mean([r["p"] < 0.05 for r in res])
        cov = np.mean([r["ci_low"] <= 0 <= r["ci_high"] for r in res])
        print(f"| {S} | {M} | {sd} | {old:.3f} | {fpr:.3f} | {cov:.3f} |", flush=True)


def chance(n_sets=6, n_draws=6, n=300, trim=6):
    """Chance levels of a feature set's residual leak: one circular shift of the features by half
    the kept TRs (the pipeline's ``chance_score``, lib.spaces.mismatch) against the mean of the
    block-permutation null that the group test already computes (``null_mean``). Per feature set
    (AR(phi) units, phi 0-0.95) the leak is the mean held-out r over its other independent BOLD
    draws (``n_draws`` each); each estimator is judged by its correlation with that leak and the
    SD of score minus the estimate."""
    from lib.spaces import design_matrix

    spec = inf.NullSpec(n_perm=200, block=30, perm_stop=None)
    kept = slice(trim, n)
    rows = []
    for phi in (0.0, 0.5, 0.9, 0.95):
        for s in range(n_sets):
            rng = np.random.default_rng([30_000, s, int(phi * 100)])
            F = _ar1(rng, n, 64, phi)
            D = ridge.prepare(design_matrix(F, kept, DELAYS), None, ridge.Splitter.for_delays(DELAYS, 1.5))
            Dc = ridge.prepare(design_matrix(F, kept, DELAYS, mismatched=True), None, ridge.Splitter.for_delays(DELAYS, 1.5))
            for _ in range(n_draws):
                Y = realistic_noise(rng, n - trim, 40)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = with_null(D, Y, spec)
                    c = ridge.score(Dc, Y).scores.mean()
                null = inf.permutation_test([[r.null_plan]], r.scores)[0]
                rows.append(dict(phi=phi, set=s, score=r.scores.mean(), chance=c,
                                 null_mean=float(np.nanmean(null))))
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby(["phi", "set"]).score     # the set's leak: its other draws' mean score
    df["leak"] = (g.transform("sum") - df.score) / (g.transform("count") - 1)
    print("\n| estimate | corr with the set's leak | SD of score - estimate | mean estimate |"
          "\n|---|---|---|---|")
    print(f"| none | | {df.score.std():.4f} | 0 |")
    for k in ("chance", "null_mean"):
        print(f"| {k} | {np.corrcoef(df[k], df.leak)[0, 1]:+.2f} | "
              f"{(df.score - df[k]).std():.4f} | {df[k].mean():+.4f} |", flush=True)
    print(f"(mean score {df.score.mean():+.4f}; leak by phi: "
          + ", ".join(f"{p:g}: {v:+.4f}" for p, v in df.groupby("phi").score.mean().items())
          + ")")


def partition_bias(n_rep=100, sizes=(300,), units=(6, 60),
                   kinds=("redundant", "copy", "independent", "real"), selections=(True,)):
    """Unique share of band B (6 subjects x 10 targets sharing the features) on smooth BOLD, the
    pipeline's way (r|r|, r selection, one weighting per outer fold): classic R^2(A, B) -
    R^2(A), against B's conditional placebo (its part that A explains kept, its residual shifted
    in time; 4 shifts: what stage 05 tests) and against B wholly shifted. ``units`` per band:
    6 (30 delayed columns) or 60 (300 columns, as many as one story's TRs, like an LM's)."""
    from lib.engine import partition as part
    from lib.engine.inference import sign_flip_pvalues
    from lib.synthetic import two_band_subjects

    print("\n| band B | units | TRs | selection | estimator | mean unique r\\|r\\| of B | SE | "
          "rate of p < 0.05 across subjects |\n|---|---|---|---|---|---|---|---|")
    for kind, u_n, n, pooled in itertools.product(kinds, units, sizes, selections):
        share, r, k = (0.3, 0.6, "independent") if kind == "real" else (0.0, 0.35, kind)
        lay = ridge.Layout.single(n, "sim")
        kw = dict(select="r", measure="rsq", pooled=pooled)
        est = {"classic": [], "vs placebo": [], "vs whole band shifted": []}
        for rep in range(n_rep):
            A, B, Y = two_band_subjects(rep, n, kind=k, unique_share=share, r=r, units=u_n)
            D = part.banded_prepare([A, B], lay, part.Splitter(gap=30), n_iter=5)
            P = {name: part.placebo_band_designs([A, B], 1, lay, part.Splitter(gap=30), n_iter=5, conditional=cond, joint=D)
                 for name, cond in (("vs placebo", True), ("vs whole band shifted", False))}
            rows = {name: [] for name in est}
            for y in np.split(Y, 6, axis=1):
                j = part.banded_score(D, y, **kw)
                rows["classic"].append(
                    j.r2.mean() - part.banded_score(part.nested(D, [0]), y, **kw).r2.mean())
                for name, designs in P.items():
                    rows[name].append(part.unique_vs_placebo(
                        j, [part.banded_score(d, y, **kw) for d in designs]).mean())
            for name in est:
                est[name].append(rows[name])
        for name, u in est.items():
            u = np.array(u)
            rate = np.mean(sign_flip_pvalues(u.T)[0] < 0.05)
            print(f"| {kind} | {u_n} | {n} | {'pooled' if pooled else 'per target'} | {name} | "
                  f"{u.mean():+.4f} | {u.mean(1).std() / np.sqrt(n_rep):.4f} | {rate:.3f} |",
                  flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["leak", "null", "planted", "crossed", "chance",
                                       "partition"])
    a = ap.parse_args()
    from lib.cluster import limit_threads, thread_count

    limit_threads(thread_count("auto"))
    for name, fn in (("leak", leak), ("null", null), ("planted", planted), ("crossed", crossed),
                     ("chance", chance), ("partition", partition_bias)):
        if a.only in (None, name):
            fn()
