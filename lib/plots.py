"""Figures for stage 06 and the report: score distributions and nilearn brain maps.

Every figure function returns a matplotlib Figure (or, for ``view_img``, writes an HTML file), so a
notebook cell shows it and the report embeds it. Titles say "synthetic BOLD" when the data are.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def synthetic_tag(synthetic: bool, what: str = "BOLD") -> str:
    """The label every figure of synthetic data carries in its title."""
    return f" [synthetic {what}]" if synthetic else ""


class SurfaceValues:
    """A map over a mesh's masked vertices (what :func:`to_img` gives for a surface run); the
    figure functions draw it on fsaverage5, fsaverage6 by its first 10,242 vertices."""

    def __init__(self, geometry, values):
        self.geometry, self.values = geometry, np.nan_to_num(np.asarray(values, np.float32))

    def get_fdata(self) -> np.ndarray:
        return np.concatenate(self.geometry.to_hemis(self.values))

    def drawn(self) -> dict[str, np.ndarray]:
        from .surface import DRAWN_VERTICES

        left, right = self.geometry.to_hemis(self.values)
        return {"left": left[:DRAWN_VERTICES], "right": right[:DRAWN_VERTICES]}

    def save(self, path) -> Path:
        return self.geometry.save_map(self.values, path)[0]


def save_img(img, path) -> Path:
    """A map to disk: NIfTI, or a GIfTI pair for a surface map."""
    if isinstance(img, SurfaceValues):
        return img.save(path)
    from .cache import save_nifti

    return save_nifti(img, path)


def surface_views(sv: SurfaceValues, title: str, vmax: float | None = None,
                  views=("lateral", "medial")):
    """Both hemispheres of a surface map on nilearn's inflated fsaverage5, ``views`` each."""
    from nilearn import datasets, plotting

    fs = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                        data_type="sulcal")
    data = sv.drawn()
    vmax = vmax or float(np.abs(np.r_[data["left"], data["right"]]).max()) or 1.0
    fig, axes = plt.subplots(1, 2 * len(views), figsize=(4.5 * len(views), 3.4),
                             subplot_kw={"projection": "3d"})
    for i, (hemi, view) in enumerate([(h, v) for h in ("left", "right") for v in views]):
        plotting.plot_surf_stat_map(fs["inflated"].parts[hemi], data[hemi], hemi=hemi, view=view,
                                    colorbar=i == len(axes) - 1, vmax=vmax, cmap="cold_hot",
                                    bg_map=sulc.data.parts[hemi], threshold=1e-6, axes=axes[i],
                                    figure=fig)
    fig.suptitle(title, fontsize=10)
    return fig


def to_img(vec: np.ndarray, mask_img):
    """Values over the mask -> a NIfTI image, or :class:`SurfaceValues` for a mesh."""
    from .geometry import is_surface, volume_image

    return SurfaceValues(mask_img, vec) if is_surface(mask_img) else volume_image(vec, mask_img)


def paired_scores(tab: pd.DataFrame, target: str, a: str = "raw", b: str = "sft",
                  synthetic: bool = False):
    """Per subject lines from condition a to b (the subject is the unit)."""
    w = tab[tab.target == target].pivot_table(index="subject", columns="condition",
                                              values="brain_score")
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    conds = [c for c in (a, b) if c in w]
    for s, r in w[conds].iterrows():
        ax.plot(range(len(conds)), r.values, "o-", color="0.5", alpha=0.8)
        ax.annotate(s, (len(conds) - 1, r.values[-1]), fontsize=7, xytext=(4, 0),
                    textcoords="offset points")
    ax.plot(range(len(conds)), w[conds].mean().values, "s-", color="C3", lw=2.5, label="mean")
    ax.set_xticks(range(len(conds)), conds)
    ax.set_xlim(-0.3, len(conds) - 0.4)
    ax.set_ylabel("brain score (Pearson r)")
    ax.set_title(f"{target}{synthetic_tag(synthetic)}", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def delta_distribution(deltas: dict[str, np.ndarray], selected: np.ndarray | None = None,
                       label: str = "sft - raw", synthetic: bool = False):
    """Histogram of voxel Δ brain score, per subject, with the ISC-reliable voxels (a selection
    that uses neither model's map) filled."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    allv = np.concatenate([d[np.isfinite(d)] for d in deltas.values()])
    lim = np.percentile(np.abs(allv), 99.5) if len(allv) else 1
    bins = np.linspace(-lim, lim, 61)
    for i, (s, d) in enumerate(deltas.items()):
        ax.hist(d[np.isfinite(d)], bins=bins, histtype="step", color=f"C{i}", label=s)
        if selected is not None and selected.any():
            ax.hist(d[selected & np.isfinite(d)], bins=bins, color=f"C{i}", alpha=0.25)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"Δ brain score per voxel ({label})")
    ax.set_ylabel("voxels")
    ax.set_title(f"Distribution of Δ over voxels{synthetic_tag(synthetic)}"
                 + ("; filled = ISC-reliable voxels" if selected is not None else ""),
                 fontsize=9)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def stat_map(img, title: str, vmax: float | None = None, cmap: str = "cold_hot", **kw):
    if isinstance(img, SurfaceValues):
        return surface_views(img, title, vmax)
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3))
    plotting.plot_stat_map(img, display_mode="ortho", title=title, vmax=vmax, cmap=cmap,
                           figure=fig, colorbar=True, black_bg=False, **kw)
    return fig


def glass_brain(img, title: str, vmax: float | None = None, **kw):
    if isinstance(img, SurfaceValues):
        return surface_views(img, title, vmax)
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3))
    plotting.plot_glass_brain(img, title=title, vmax=vmax, figure=fig, colorbar=True,
                              plot_abs=False, cmap="cold_hot", black_bg=False, **kw)
    return fig


def surface(img, title: str, vmax: float | None = None):
    """Left and right lateral views on nilearn's bundled fsaverage5."""
    if isinstance(img, SurfaceValues):
        return surface_views(img, title, vmax, views=("lateral",))
    from nilearn import datasets, plotting, surface as nsurf

    fs = datasets.load_fsaverage("fsaverage5")
    sulc = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                        data_type="sulcal")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), subplot_kw={"projection": "3d"})
    vmax = vmax or float(np.nanmax(np.abs(img.get_fdata()))) or 1.0
    for ax, hemi in zip(axes, ("left", "right")):
        tex = nsurf.vol_to_surf(img, fs["pial"].parts[hemi])
        plotting.plot_surf_stat_map(fs["inflated"].parts[hemi], tex, hemi=hemi, view="lateral",
                                    colorbar=hemi == "right", vmax=vmax, cmap="cold_hot",
                                    bg_map=sulc.data.parts[hemi], threshold=1e-6, axes=ax,
                                    figure=fig)
    fig.suptitle(title, fontsize=10)
    return fig


def save_view_img(img, path: str | Path, title: str, vmax: float | None = None,
                  fallback=None) -> Path:
    """Interactive HTML brain viewer (nilearn ``view_img``) saved next to the report; when
    ``img`` is empty (nothing survived the threshold) ``fallback`` is shown instead and the title
    says it is unthresholded."""
    from nilearn import plotting

    from .cache import atomic_path

    if fallback is not None and not np.any(img.get_fdata()):
        img, vmax = fallback, None
        title = f"{title} (unthresholded: no voxel survives the threshold)"

    import hashlib
    import re

    if isinstance(img, SurfaceValues):   # both hemispheres on fsaverage5 (nilearn view_surf)
        from nilearn import datasets
        from nilearn.surface import SurfaceImage

        fs = datasets.load_fsaverage("fsaverage5")
        data = img.drawn()
        top = float(np.abs(np.r_[data["left"], data["right"]]).max()) or 1.0
        v = plotting.view_surf(fs["inflated"], SurfaceImage(mesh=fs["inflated"], data=data),
                               hemi="both", title=title, vmax=vmax or top, cmap="cold_hot",
                               symmetric_cmap=True, threshold=1e-6)
    else:
        v = plotting.view_img(img, title=title, vmax=vmax, cmap="cold_hot", symmetric_cmap=True)
    # nilearn's page is self-contained but for a favicon link to github: drop it (offline)
    html = re.sub(r'<link[^>]*rel="icon"[^>]*>', "", v.get_standalone())
    # its element ids are random uuids: make them a function of the page so reruns are identical
    m = re.search(r"viewer-([0-9a-f]{32})", html)
    if m:
        page_id = hashlib.sha256(html.replace(m.group(1), "").encode()).hexdigest()[:32]
        html = html.replace(m.group(1), page_id)
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Path(path)


def save(fig, path: str | Path) -> Path:
    from .cache import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(path)


def layer_profile(df: pd.DataFrame, synthetic: bool = False):
    """Brain score vs layer, mean ± 95% bootstrap CI over subjects, one line per condition."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    rng = np.random.default_rng(0)
    for i, (cond, g) in enumerate(df.groupby("condition")):
        w = g.pivot_table(index="layer", columns="subject", values="brain_score")
        m = w.mean(1)
        draws = rng.integers(0, w.shape[1], (2000, w.shape[1]))      # subjects resampled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)             # an all-NaN layer
            boots = np.nanmean(w.to_numpy()[:, draws], axis=2).T       # (2000, layers)
        lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
        ax.plot(w.index, m, "o-", color=f"C{i}", label=cond)
        ax.fill_between(w.index, lo, hi, color=f"C{i}", alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel("brain score (r)")
    ax.set_title(f"Layer profile{synthetic_tag(synthetic)}", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def partition_bars(table: pd.DataFrame, target: str, synthetic: bool = False):
    """Variance partition of one target: joint, unique per space (and against the space's
    conditional placebo, where tested) and shared (held-out r|r|), mean over subjects with each
    subject as a dot."""
    t = table[table.target == target]
    order = ["joint"] + sorted(m for m in t.measure.unique() if m.startswith("unique")) + \
        ["shared"]
    order = [m for m in order if m in set(t.measure)]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, m in enumerate(order):
        v = t[t.measure == m].r2.to_numpy()
        ax.bar(i, np.mean(v), color="C0" if m == "joint" else ("0.6" if m == "shared" else "C1"),
               alpha=0.8)
        ax.plot(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, "k.", ms=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(order)), [m.replace("unique_vs_placebo:", "vs placebo ")
                                      .replace("unique:", "unique ") for m in order],
                  rotation=20, fontsize=8)
    ax.set_ylabel("held-out r|r| (signed squared r)")
    ax.set_title(f"Variance partition: {target}{synthetic_tag(synthetic)}", fontsize=10)
    fig.tight_layout()
    return fig


def alpha_diagnostic(alphas: pd.DataFrame, grid, synthetic: bool = False):
    """How often each penalty of the grid was chosen, per condition (himalaya's
    plot_alphas_diagnostic, for counts pooled over subjects, folds and voxels): mass piling up
    at an end of the grid says widen it."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    grid = np.sort(np.asarray(grid, float))
    for i, (cond, g) in enumerate(alphas.groupby("condition")):
        counts = g.groupby("alpha").n_choices.sum().reindex(grid, fill_value=0)
        ax.plot(np.log10(grid), counts.to_numpy() / max(1, counts.sum()), ".-", color=f"C{i}",
                label=cond)
    ax.set_xlabel("log10(alpha)")
    ax.set_ylabel("share of choices")
    ax.set_title(f"Chosen ridge penalties{synthetic_tag(synthetic)}", fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def roi_scores(tab: pd.DataFrame, conditions=("raw", "sft"), synthetic: bool = False):
    """Brain score per named ROI: a bar per condition (mean over subjects), subjects as dots."""
    roi = tab[tab.target.str.startswith("roi-") & ~tab.target.str[4:].str.isdigit()
              & tab.condition.isin(conditions)]
    targets = sorted(roi.target.unique(), key=lambda t: (t[6:], t[4]))   # by region, L then R
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(targets) + 2), 3.4))
    w = 0.8 / len(conditions)
    for j, cond in enumerate(conditions):
        g = roi[roi.condition == cond]
        x0 = np.arange(len(targets)) + (j - (len(conditions) - 1) / 2) * w
        means = [g[g.target == t].brain_score.mean() for t in targets]
        ax.bar(x0, means, w, color=f"C{j}", alpha=0.7, label=cond)
        for x, t in zip(x0, targets):
            v = g[g.target == t].brain_score.to_numpy()
            ax.plot(np.full(len(v), x), v, "k.", ms=3)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(targets)), [t[4:] for t in targets], rotation=60, fontsize=8)
    ax.set(ylabel="brain score (r)", title=f"Named language ROIs{synthetic_tag(synthetic)}")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
