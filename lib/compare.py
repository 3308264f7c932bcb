"""Stage 06: does fine-tuning change brain scores? Paired comparisons with the subject as the unit.

Per subject, scores are first averaged over runs, stories and seeds; contrasts (e.g. ``sft - raw``)
are then tested across subjects: number improved, mean and median change, paired Wilcoxon
signed-rank and paired t tests, a bootstrap 95% CI of the mean change over subjects, Cohen's d_z,
and the same on noise-ceiling-normalised scores. Voxel summaries: the mask mean, the top 10% of
voxels by the raw model's score chosen on the OTHER subjects (leave-one-subject-out, so the
selection does not favour the raw model through regression to the mean), and ROI means.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError
from .encoding import normalised

CONTRASTS = [("sft", "raw"), ("control", "raw"), ("sft", "control"), ("leaky", "raw"),
             ("raw", "random"), ("raw", "wordrate")]


def load_stage05(d: str | Path) -> dict:
    d = Path(d)
    if not (d / "scores.csv").exists():
        raise DataError(f"{d / 'scores.csv'}: not found (run stage 05 first)")
    scores = pd.read_csv(d / "scores.csv", keep_default_na=False, na_values=[""])
    with np.load(d / "voxel_scores.npz") as z:
        voxels = {k: z[k] for k in z.files}
    group = {}
    if (d / "group.npz").exists():
        with np.load(d / "group.npz") as z:
            group = {k: z[k] for k in z.files}
    nc = pd.read_csv(d / "noise_ceiling.csv") if (d / "noise_ceiling.csv").stat().st_size > 1 \
        else pd.DataFrame()
    return dict(scores=scores, voxels=voxels, group=group, noise_ceiling=nc, dir=d)


def subject_maps(voxels: dict, condition: str) -> dict[str, np.ndarray]:
    """Per subject: voxel scores averaged over that subject's runs, stories and seeds."""
    by: dict[str, list] = {}
    for k, v in voxels.items():
        sub, story, run, cond, seed = k.split("|")
        if cond == condition:
            by.setdefault(sub, []).append(v)
    return {s: np.nanmean(v, 0) for s, v in sorted(by.items())}


def loso_top_mean(reference: dict[str, np.ndarray], target: dict[str, np.ndarray],
                  frac: float = 0.1) -> dict[str, float]:
    """Per subject: mean of ``target`` over the top ``frac`` voxels of ``reference`` averaged over
    the other subjects (leave-one-subject-out selection)."""
    subs = sorted(set(reference) & set(target))
    out = {}
    for s in subs:
        others = [reference[o] for o in subs if o != s]
        if not others:
            continue
        ref = np.nan_to_num(np.nanmean(others, 0), nan=-np.inf)
        k = max(1, int(round(frac * np.isfinite(ref).sum())))
        top = np.argsort(ref)[-k:]
        out[s] = float(np.nanmean(target[s][top]))
    return out


def subject_table(st: dict, frac: float = 0.1, roi_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Long table: subject, condition, target, brain_score (and ceiling-normalised score)."""
    sc = st["scores"]
    tab = (sc.groupby(["subject", "condition", "target"], as_index=False)["brain_score"].mean())
    conds = sorted(sc["condition"].unique())
    maps = {c: subject_maps(st["voxels"], c) for c in conds}
    extra = []
    if "raw" in maps:
        for c in conds:
            for s, v in loso_top_mean(maps["raw"], maps[c], frac).items():
                extra.append(dict(subject=s, condition=c, target=f"voxels_top{int(frac * 100)}pct_loso",
                                  brain_score=v))
    if roi_mask is not None:
        for c in conds:
            for s, v in maps[c].items():
                extra.append(dict(subject=s, condition=c, target="planted_roi_voxels",
                                  brain_score=float(np.nanmean(v[roi_mask]))))
    tab = pd.concat([tab, pd.DataFrame(extra)], ignore_index=True)
    # noise-ceiling normalisation (leave-one-subject-out ISC of the same subject)
    nc = st["noise_ceiling"]
    ceil_map = subject_maps(st["voxels"], "noise_ceiling")
    norm = []
    for r in tab.itertuples():
        val = np.nan
        if r.target == "whole_brain_mean" and len(nc):
            c = nc.loc[nc.subject == r.subject, "isc_whole_brain_mean"].mean()
            val = float(normalised(np.array([r.brain_score]), np.array([c]))[0])
        elif r.target == "voxels_mean" and r.subject in ceil_map and r.subject in maps[r.condition]:
            v = normalised(maps[r.condition][r.subject], ceil_map[r.subject])
            val = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
        norm.append(val)
    tab["normalised_score"] = norm
    tab["synthetic_bold"] = bool(sc["synthetic_bold"].astype(str).str.lower().eq("true").any())
    return tab


def paired_stats(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of a vs b across subjects (Δ = a - b)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    out = dict(n_subjects=n, n_improved=int((d > 0).sum()), mean_delta=float(np.mean(d)) if n
               else np.nan, median_delta=float(np.median(d)) if n else np.nan)
    if n >= 2:
        sd = d.std(ddof=1)
        out["cohens_dz"] = float(d.mean() / sd) if sd > 0 else np.nan
        t = stats.ttest_rel(a[ok], b[ok])
        out.update(t=float(t.statistic), p_t=float(t.pvalue))
        rng = np.random.default_rng(seed)
        boots = d[rng.integers(0, n, (n_boot, n))].mean(1)
        out.update(ci95_low=float(np.percentile(boots, 2.5)),
                   ci95_high=float(np.percentile(boots, 97.5)))
    if n >= 1 and np.any(d != 0):
        w = stats.wilcoxon(d)
        out.update(wilcoxon_W=float(w.statistic), p_wilcoxon=float(w.pvalue))
    return out


def contrast_table(tab: pd.DataFrame, contrasts=CONTRASTS, value: str = "brain_score"
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-subject Δ table, statistics table) for every contrast whose conditions both exist."""
    deltas, stats_rows = [], []
    wide = tab.pivot_table(index=["subject", "target"], columns="condition", values=value)
    for a, b in contrasts:
        if a not in wide or b not in wide:
            continue
        for target, g in wide.groupby(level="target"):
            d = (g[a] - g[b]).dropna()
            for (sub, _), v in d.items():
                deltas.append(dict(contrast=f"{a} - {b}", target=target, subject=sub,
                                   a=float(g.loc[(sub, target), a]),
                                   b=float(g.loc[(sub, target), b]), delta=float(v)))
            stats_rows.append(dict(contrast=f"{a} - {b}", target=target, measure=value,
                                   **paired_stats(g[a].to_numpy(), g[b].to_numpy())))
    return pd.DataFrame(deltas), pd.DataFrame(stats_rows)


def voxel_delta(voxels: dict, a: str = "sft", b: str = "raw") -> dict[str, np.ndarray]:
    """Per subject Δ map (a - b)."""
    ma, mb = subject_maps(voxels, a), subject_maps(voxels, b)
    return {s: ma[s] - mb[s] for s in sorted(set(ma) & set(mb))}


def voxel_delta_summary(deltas: dict[str, np.ndarray], significant: np.ndarray | None = None
                        ) -> pd.DataFrame:
    """Per subject: voxels improved (all and among significant voxels), mean Δ."""
    rows = []
    for s, d in deltas.items():
        ok = np.isfinite(d)
        row = dict(subject=s, n_voxels=int(ok.sum()), n_improved=int((d[ok] > 0).sum()),
                   frac_improved=float((d[ok] > 0).mean()), mean_delta=float(d[ok].mean()))
        if significant is not None and significant.any():
            sel = ok & significant
            row.update(n_significant=int(sel.sum()), n_improved_significant=int((d[sel] > 0).sum()),
                       mean_delta_significant=float(d[sel].mean()) if sel.any() else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def sft_summary(models_csv: str | Path) -> pd.DataFrame:
    """Training record of the fine-tuned models (loss / perplexity before and after)."""
    p = Path(models_csv)
    if not p.exists():
        return pd.DataFrame()
    df = pd.read_csv(p)
    keep = ["kind", "fold", "seed", "leaky", "train_tokens_seen", "train_loss_first",
            "train_loss_last", "val_ppl_before", "val_ppl_after", "seconds", "device"]
    return df[[c for c in keep if c in df]]
