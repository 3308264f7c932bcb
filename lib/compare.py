"""Stage 06: does fine-tuning change brain scores? Paired comparisons, the subject as the unit.

Subject scores: a run's score first, runs averaged within a story (pieman run-1 and run-2 are
two hearings of the same story), stories with equal weight, then SFT seeds (repeated measures
inside a subject, never extra samples). Every score comes with its chance score (the same
features, mismatched in time) and, where a noise ceiling exists, a normalised score.

Targets: the fitted whole-brain mean and ROI means, and voxel summaries built from the maps --
``voxels_mean`` (mask mean, dominated by non-language voxels), ``voxels_reliable`` (voxels whose
response to the story is reliable across subjects: group ISC significant at FDR q against
circular shifts, stage 05) and ``voxels_top<k>pct`` (the top k% of voxels by the noise ceiling of
the *other* subjects). Neither selection uses a model's map, so neither can favour a side of a
contrast.

Contrasts (Δ = a - b) are tested across subjects by :func:`lib.engine.inference.paired_stats`: number
improved, mean and median Δ, exact sign-flip permutation p, Student-t 95% CI, Wilcoxon and t,
Cohen's d_z, and the smallest p the sign tests can reach with n subjects (0.0625 at n = 5).
With several fine-tuning seeds, the headline Δ also treats the trained models as a random effect
crossed with subjects (:func:`crossed_table`, :mod:`lib.engine.crossed`): averaging seeds inside
each subject would make one model's quirk look like a finding about fine-tuning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError
from .engine import crossed_test, normalised, paired_stats

CONTRASTS = [("sft", "raw"), ("control", "raw"), ("scrambled", "raw"), ("sft", "control"),
             ("sft", "scrambled"), ("sft-leaky", "raw"), ("raw", "random"),
             ("raw", "word_rate")]
NOT_MODELS = {"noise_ceiling", "isc_loso", "isc_reliable", "repeat_ceiling"}


def is_model(cond: str) -> bool:
    """A condition with brain scores (not a ceiling map, not a partition measure)."""
    return cond not in NOT_MODELS and not cond.startswith("partition:")
MEASURES = {"brain_score": "r", "above_chance": "r - chance r",
            "normalised_score": "r / noise ceiling"}


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
    read = lambda n: pd.read_csv(d / n) if (d / n).exists() and (d / n).stat().st_size > 1 \
        else pd.DataFrame()
    return dict(scores=scores, voxels=voxels, group=group, noise_ceiling=read("noise_ceiling.csv"),
                group_tests=read("group_tests.csv"), partition=read("partition.csv"),
                spaces_skipped=read("spaces_skipped.csv"), dir=d)


def _mean(values) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, 0)


def subject_maps(voxels: dict, condition: str) -> dict[str, np.ndarray]:
    """Per subject: runs averaged within story, stories equally, then seeds."""
    by: dict = {}
    for k, v in voxels.items():
        sub, story, run, cond, seed = k.split("|")
        if cond == condition:
            by.setdefault(sub, {}).setdefault(seed, {}).setdefault(story, []).append(v)
    return {s: _mean([_mean([_mean(r) for r in stories.values()]) for stories in seeds.values()])
            for s, seeds in sorted(by.items())}


def subject_scores(scores: pd.DataFrame, value: str = "brain_score", keys=()) -> pd.DataFrame:
    """Run-level rows -> one value per subject, condition, target (and ``keys``, e.g. layer),
    by the same rule as the maps."""
    by = ["subject", "condition", "target", *keys]
    per_story = scores.groupby(by + ["seed", "story"], as_index=False)[value].mean()
    per_seed = per_story.groupby(by + ["seed"], as_index=False)[value].mean()
    return per_seed.groupby(by, as_index=False)[value].mean()


def others_ceiling(ceilings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per subject: the mean noise-ceiling map of the OTHER subjects (model-neutral selection)."""
    out = {}
    for s in ceilings:
        others = [ceilings[o] for o in ceilings if o != s]
        if others:
            out[s] = _mean(others)
    return out


def top_mean(criterion: dict[str, np.ndarray], target: dict[str, np.ndarray],
             frac: float = 0.1) -> dict[str, float]:
    """Per subject: mean of ``target`` over its top ``frac`` voxels by ``criterion``."""
    out = {}
    for s, crit in criterion.items():
        if s not in target:
            continue
        c = np.nan_to_num(crit, nan=-np.inf)
        k = max(1, int(round(frac * np.isfinite(crit).sum())))
        out[s] = float(np.nanmean(target[s][np.argsort(c)[-k:]]))
    return out


def ratio_of_means(score: np.ndarray, ceiling: np.ndarray, sel: np.ndarray,
                   min_ceiling: float = 0.1) -> float:
    """Normalised score of a voxel set: mean score / mean ceiling over ``sel`` (NaN when that mean
    ceiling is below ``min_ceiling``). Only the ISC-reliable voxels are normalised: with few
    subjects Spearman-Brown turns a noise ISC of 0.01 into a ceiling of 0.1, and a mean of
    per-voxel ratios lets those voxels' small denominators dominate."""
    ok = sel & np.isfinite(score) & np.isfinite(ceiling)
    mc = float(np.mean(ceiling[ok])) if ok.any() else np.nan
    return float(np.mean(score[ok])) / mc if mc >= min_ceiling else np.nan


def voxel_targets(st: dict, frac: float = 0.1, min_ceiling: float = 0.1,
                  roi_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Subject-level voxel summaries for every condition (and its chance maps)."""
    conds = sorted(c for c in {k.split("|")[3] for k in st["voxels"]} if is_model(c))
    ceil = subject_maps(st["voxels"], "noise_ceiling")
    crit = others_ceiling(ceil)
    reliable = {s: m > 0 for s, m in subject_maps(st["voxels"], "isc_reliable").items()}
    rows = []
    for c in conds:
        base, _, kind = c.partition("~")
        col = "chance_score" if kind == "chance" else "brain_score"
        maps = subject_maps(st["voxels"], c)
        for s, v in top_mean(crit, maps, frac).items():
            rows.append(dict(subject=s, condition=base, target=f"voxels_top{round(frac * 100)}pct",
                             **{col: v}))
        for s, m in maps.items():
            if s in reliable:
                sel = reliable[s]
                rows.append(dict(subject=s, condition=base, target="voxels_reliable",
                                 n_voxels=int(sel.sum()),
                                 **{col: float(np.nanmean(m[sel])) if sel.any() else np.nan}))
            if roi_mask is not None:
                rows.append(dict(subject=s, condition=base, target="planted_roi_voxels",
                                 **{col: float(np.nanmean(m[roi_mask]))}))
            if not kind and s in ceil and s in reliable:
                rows.append(dict(subject=s, condition=base, target="voxels_reliable",
                                 normalised_score=ratio_of_means(m, ceil[s], reliable[s],
                                                                 min_ceiling)))
    if not rows:
        return pd.DataFrame(columns=["subject", "condition", "target"])
    df = pd.DataFrame(rows)
    return df.groupby(["subject", "condition", "target"], as_index=False).first()


def subject_table(st: dict, frac: float = 0.1, roi_mask: np.ndarray | None = None,
                  min_ceiling: float = 0.1) -> pd.DataFrame:
    """Long table: subject, condition, target, brain_score, chance_score, above_chance,
    normalised_score (score / noise ceiling where the ceiling >= ``min_ceiling``)."""
    sc = st["scores"]
    tab = subject_scores(sc, "brain_score").merge(subject_scores(sc, "chance_score"),
                                                  on=["subject", "condition", "target"])
    nc = st["noise_ceiling"]
    if len(nc):
        ceil = nc[nc.ceiling_kind == "isc_loso_spearman_brown"].groupby(
            ["subject", "target"], as_index=False)["noise_ceiling"].mean()
        tab = tab.merge(ceil, on=["subject", "target"], how="left")
        tab["normalised_score"] = normalised(tab.brain_score, tab.noise_ceiling, min_ceiling)
        tab = tab.drop(columns="noise_ceiling")
    vt = voxel_targets(st, frac, min_ceiling, roi_mask)
    key = ["subject", "condition", "target"]
    tab = tab.set_index(key).combine_first(vt.set_index(key)).reset_index()
    tab["above_chance"] = tab.brain_score - tab.chance_score
    tab["synthetic_bold"] = bool(sc["synthetic_bold"].astype(str).str.lower().eq("true").any())
    return tab


def contrast_table(tab: pd.DataFrame, contrasts=CONTRASTS, value: str = "brain_score"
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-subject Δ table, statistics table) for every contrast whose conditions both exist."""
    deltas, stats_rows = [], []
    if value not in tab:
        return pd.DataFrame(), pd.DataFrame()
    wide = tab.pivot_table(index=["subject", "target"], columns="condition", values=value,
                           dropna=False)
    for a, b in contrasts:
        if a not in wide or b not in wide:
            continue
        for target, g in wide.groupby(level="target"):
            ok = g[[a, b]].dropna()
            if ok.empty:
                continue
            for (sub, _), r in ok.iterrows():
                deltas.append(dict(contrast=f"{a} - {b}", target=target, measure=value,
                                   subject=sub, a=float(r[a]), b=float(r[b]),
                                   delta=float(r[a] - r[b])))
            stats_rows.append(dict(contrast=f"{a} - {b}", target=target, measure=value,
                                   **paired_stats(ok[a].to_numpy(), ok[b].to_numpy())))
    stats = pd.DataFrame(stats_rows)
    return pd.DataFrame(deltas), roi_fdr(stats)


def _seeds_of(st: dict) -> dict[str, set]:
    sc = st["scores"]
    return {c: set(g.seed.astype(int)) for c, g in sc.groupby("condition")}


def _restrict_seed(st: dict, seed: int, seeds_of: dict) -> dict:
    """``st`` with every multi-seed condition reduced to ``seed`` (single-seed conditions, e.g.
    raw, and the ceilings stay whole)."""
    def keep(cond, sd):
        return len(seeds_of.get(cond.split("~")[0], {sd})) == 1 or int(sd) == seed

    sc = st["scores"]
    vox = {k: v for k, v in st["voxels"].items() if keep(k.split("|")[3], k.split("|")[4])}
    return {**st, "scores": sc[[keep(c, sd) for c, sd in zip(sc.condition, sc.seed)]],
            "voxels": vox}


def seed_table(st: dict, frac: float = 0.1, roi_mask: np.ndarray | None = None,
               min_ceiling: float = 0.1) -> pd.DataFrame:
    """:func:`subject_table` once per fine-tuning seed (column ``seed``): the subject x seed
    cells of the crossed test. Empty when no condition has more than one seed."""
    seeds_of = _seeds_of(st)
    multi = sorted(set().union(*[v for v in seeds_of.values() if len(v) > 1] or [set()]))
    return pd.concat([subject_table(_restrict_seed(st, sd, seeds_of), frac, roi_mask,
                                    min_ceiling).assign(seed=sd) for sd in multi],
                     ignore_index=True) if multi else pd.DataFrame()


def crossed_table(seeds: pd.DataFrame, contrasts=CONTRASTS, value: str = "brain_score"
                  ) -> pd.DataFrame:
    """Δ of every contrast and target with subjects and fine-tuned models (seeds) as crossed
    random effects (:func:`lib.engine.crossed.crossed_test`): subjects with every seed only."""
    rows = []
    if seeds.empty or value not in seeds:
        return pd.DataFrame()
    for a, b in contrasts:
        sub = seeds[seeds.condition.isin([a, b])]
        for target, g in sub.groupby("target"):
            w = g.pivot_table(index=["subject", "seed"], columns="condition", values=value)
            if a not in w or b not in w:
                continue
            D = (w[a] - w[b]).unstack("seed").dropna()
            if D.shape[0] < 2 or D.shape[1] < 2:
                continue
            r = crossed_test(D.to_numpy())
            rows.append(dict(contrast=f"{a} - {b}", target=target, measure=value,
                             n_seeds=r["n_seeds"], crossed_n_subjects=r["n_subjects"],
                             crossed_delta=r["delta"], crossed_ci_low=r["ci_low"],
                             crossed_ci_high=r["ci_high"], crossed_p=r["p"], crossed_df=r["df"],
                             seed_sd=r["seed_sd"], mde=r["mde"],
                             seed_deltas=" ".join(f"{v:+.4f}" for v in r["seed_means"])))
    return pd.DataFrame(rows)


def is_named_roi(target: str) -> bool:
    """An atlas ROI target (``roi-L_pSTG``); numbered labels (``roi-1``) are not named ROIs."""
    return target.startswith("roi-") and not target[4:].isdigit()


def roi_fdr(stats: pd.DataFrame) -> pd.DataFrame:
    """``q_roi``: Benjamini-Hochberg q-values of the sign-flip p across the named ROIs of each
    contrast and measure (NaN for other targets)."""
    from scipy.stats import false_discovery_control

    if stats.empty or "p_sign_flip" not in stats:
        return stats
    stats = stats.copy()
    stats["q_roi"] = np.nan
    roi = stats.target.map(is_named_roi)
    for _, g in stats[roi].groupby(["contrast", "measure"]):
        stats.loc[g.index, "q_roi"] = false_discovery_control(g.p_sign_flip.to_numpy(float),
                                                              method="bh")
    return stats


def voxel_delta(voxels: dict, a: str = "sft", b: str = "raw") -> dict[str, np.ndarray]:
    """Per subject Δ map (a - b), each side averaged over its seeds like the Δ statistics."""
    ma, mb = subject_maps(voxels, a), subject_maps(voxels, b)
    return {s: ma[s] - mb[s] for s in sorted(set(ma) & set(mb))}


def reliable_voxels(voxels: dict) -> np.ndarray | None:
    """Voxels whose response to the story is reliable across subjects (the ``isc_reliable`` maps,
    a majority of subjects): the model-neutral selection of the voxel-Δ summary and the Δ map.
    None when the run has no reliability maps (one subject)."""
    rel = subject_maps(voxels, "isc_reliable")
    return np.mean([m > 0 for m in rel.values()], 0) >= 0.5 if rel else None


def voxel_delta_summary(deltas: dict[str, np.ndarray], reliable: np.ndarray | None = None
                        ) -> pd.DataFrame:
    """Per subject: voxels improved (all, and among the ISC-reliable voxels, a selection that uses
    neither model's map), mean Δ."""
    rows = []
    for s, d in deltas.items():
        ok = np.isfinite(d)
        row = dict(subject=s, n_voxels=int(ok.sum()), n_improved=int((d[ok] > 0).sum()),
                   frac_improved=float((d[ok] > 0).mean()), mean_delta=float(d[ok].mean()))
        if reliable is not None and reliable.any():
            sel = ok & reliable
            row.update(n_reliable=int(sel.sum()), n_improved_reliable=int((d[sel] > 0).sum()),
                       mean_delta_reliable=float(d[sel].mean()) if sel.any() else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


HEADLINE_TARGETS = ("voxels_reliable", "voxels_top10pct", "whole_brain_mean")


def headline(stats: pd.DataFrame, contrast: str = "sft - raw", targets=HEADLINE_TARGETS,
             synthetic: bool = False) -> str:
    """The Δ result in one sentence, with its test and CI, for the first of ``targets`` this run
    has (ISC-reliable voxels when there are any)."""
    s = stats[(stats.contrast == contrast) & (stats.measure == "brain_score")
              & stats.target.isin(targets)].dropna(subset=["mean_delta"])
    if s.empty:
        return f"No {contrast} comparison in this run."
    r = s.set_index("target").loc[[t for t in targets if t in set(s.target)][0]]
    target = r.name
    tag = " (SYNTHETIC BOLD: a pipeline check, not a finding about brains)" if synthetic else ""
    if r.get("n_seeds", 0) >= 2:
        return (f"Fine-tuning changed the brain score ({target}) by Δr = {r.crossed_delta:+.4f} "
                f"over {r.crossed_n_subjects} subjects and {int(r.n_seeds)} fine-tuning seeds "
                f"(subjects and trained models as crossed random effects: 95% CI "
                f"{r.crossed_ci_low:+.4f} to {r.crossed_ci_high:+.4f}, p = {r.crossed_p:.3g}, "
                f"{r.crossed_df:.1f} df; Δ per seed {r.seed_deltas}, between-seed SD "
                f"{r.seed_sd:.4f}; the smallest Δ this design detects with 80% power is "
                f"{r.mde:.4f}); {r.n_improved} of {r.n_subjects} subjects improved on "
                f"average over seeds{tag}.")
    return (f"Fine-tuning changed the brain score ({target}) by Δr = {r.mean_delta:+.4f} "
            f"(t 95% CI {r.ci95_low:+.4f} to {r.ci95_high:+.4f}); {r.n_improved} of "
            f"{r.n_subjects} subjects improved; exact sign-flip p = {r.p_sign_flip:.3g} "
            f"(the smallest p possible with {r.n_subjects} subjects is "
            f"{r.p_min_attainable:.3g}). One fine-tuning seed: the variance between trained "
            f"models is not in this CI{tag}.")


def partition_table(st: dict, roi_mask: np.ndarray | None = None) -> pd.DataFrame:
    """Subject-level partition (runs in story, stories equally, seeds), one row per subject,
    target and measure; voxel summaries computed from the maps like the brain scores'."""
    p = st.get("partition", pd.DataFrame())
    if p is None or not len(p):
        return pd.DataFrame()
    per = (p.groupby(["subject", "target", "measure", "seed", "story"], as_index=False).r2.mean()
            .groupby(["subject", "target", "measure", "seed"], as_index=False).r2.mean()
            .groupby(["subject", "target", "measure"], as_index=False).r2.mean())
    reliable = {s: m > 0 for s, m in subject_maps(st["voxels"], "isc_reliable").items()}
    extra = []
    for m in sorted(p.measure.unique()):
        maps = subject_maps(st["voxels"], f"partition:{m}")
        for s, v in maps.items():
            if s in reliable and reliable[s].any():
                extra.append(dict(subject=s, target="voxels_reliable", measure=m,
                                  r2=float(np.nanmean(v[reliable[s]]))))
            if roi_mask is not None:
                extra.append(dict(subject=s, target="planted_roi_voxels", measure=m,
                                  r2=float(np.nanmean(v[roi_mask]))))
    return pd.concat([per, pd.DataFrame(extra)], ignore_index=True)


def sft_summary(models_csv: str | Path) -> pd.DataFrame:
    """Training record of the fine-tuned models (loss / perplexity before and after)."""
    p = Path(models_csv)
    if not p.exists():
        return pd.DataFrame()
    df = pd.read_csv(p)
    keep = ["condition", "kind", "fold", "seed", "leaky", "train_tokens_seen", "train_loss_first",
            "train_loss_last", "val_ppl_before", "val_ppl_after", "seconds", "device"]
    return df[[c for c in keep if c in df]]


def roi_summary(tab: pd.DataFrame, stats: pd.DataFrame, contrast: str = "sft - raw"
                ) -> pd.DataFrame:
    """Per named ROI: the mean brain and chance scores of raw and SFT over subjects, and the Δ
    statistics of ``contrast`` with its q across ROIs."""
    roi = tab[tab.target.map(is_named_roi)]
    if roi.empty:
        return pd.DataFrame()
    means = roi.pivot_table(index="target", columns="condition",
                            values=["brain_score", "chance_score"], aggfunc="mean")
    means.columns = [f"{v}_{c}" for v, c in means.columns]
    keep = [c for c in means if c.endswith(("_raw", "_sft"))]
    d = stats[(stats.contrast == contrast) & (stats.measure == "brain_score")
              & stats.target.map(is_named_roi)].set_index("target")
    cols = [c for c in ("n_subjects", "n_improved", "mean_delta", "ci95_low", "ci95_high",
                        "p_sign_flip", "q_roi") if c in d]
    return means[keep].join(d[cols]).reset_index().round(4)


def with_crossed(stats: pd.DataFrame, st: dict, frac: float = 0.1,
                 roi_mask: np.ndarray | None = None, min_ceiling: float = 0.1
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stats with the crossed subjects x seeds columns where seeds allow, the seed table)."""
    seeds = seed_table(st, frac, roi_mask, min_ceiling)
    cross = crossed_table(seeds)
    if cross.empty:
        return stats.assign(n_seeds=1), seeds
    out = stats.merge(cross, on=["contrast", "target", "measure"], how="left")
    return out.assign(n_seeds=out.n_seeds.fillna(1).astype(int)), seeds
