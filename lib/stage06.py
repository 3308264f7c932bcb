"""Stage 06, one entry for every kind of target: does fine-tuning change brain scores?

:func:`sections` computes and writes every table and figure of the comparison under
``<run>/compare`` and yields them as :class:`Section` s for the notebook to show. The kind of
target decides the statistics:

* volumes and surfaces (:mod:`lib.compare`): the subject is the unit of inference -- paired
  comparisons across subjects, voxel summaries selected by no model's map, ROIs, brain maps,
  variance partitioning;
* response matrices (:mod:`lib.matrix_compare`): with few subjects, held-out time within each
  subject is the unit -- the answer per subject and combined with its minimum detectable effect,
  the dose-response over fine-tuning checkpoints, Δ by layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from . import compare, matrix_compare as mc, plots
from .cache import write_csv


@dataclass
class Section:
    """A heading, what it shows in words, and the tables, sentences and figures under it."""
    title: str
    note: str = ""
    items: list = field(default_factory=list)


def show(section: Section) -> None:
    """Display a section in a notebook (each figure once)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    display(Markdown(f"## {section.title}" + (f"\n{section.note}" if section.note else "")))
    for item in section.items:
        display(Markdown(item) if isinstance(item, str) else item)
        if isinstance(item, plt.Figure):
            plt.close(item)


def sections(run_dir: str | Path, kind: str, headline_targets: str = "first10",
             top_frac: float = 0.1, fdr_q: float = 0.05, min_ceiling: float = 0.1
             ) -> Iterator[Section]:
    """Every section of stage 06 for a run whose stage 05 fitted ``kind`` targets
    (:func:`lib.data.target_kind`); the files are written as each section is made."""
    run = Path(run_dir)
    if kind == "matrix":
        yield from matrix_sections(run, headline_targets)
    else:
        yield from volume_sections(run, top_frac, fdr_q, min_ceiling)


def _synthetic(scores: pd.DataFrame) -> bool:
    return bool(scores.synthetic_bold.astype(str).str.lower().eq("true").any())


# --------------------------------------------------------------------------- response matrices
def matrix_sections(run: Path, headline_targets: str = "first10") -> Iterator[Section]:
    """The answer per subject (held-out time as the unit), then every contrast, the original
    study's outcomes, the dose-response, Δ by layer and the scores behind them."""
    out = run / "compare"
    st = mc.load_tables(run / "brain_score")
    syn = _synthetic(st["scores"])
    head = mc.headline_set(st["scores"], headline_targets)
    yield _matrix_answer(st, head, out)
    if "answer" in st:
        write_csv(out / "answer.csv", st["answer"])
        yield Section("The answer table: every contrast, per subject and combined, with the "
                      "minimum detectable effect",
                      "`se_time` is the held-out-time part of the standard error, `se_seed` the "
                      "seeds' part; `mde` is the smallest |Δ| the design detects with 80% power "
                      "(two-sided 5%). The fine-tuning contrasts are drawn on their own scale, "
                      "apart from the sanity contrasts that are about 100x larger.",
                      [_saved(mc.answer_plot(st["answer"], head, syn), out / "answer.png"),
                       st["answer"][["contrast", "targets", "subject", "delta", "ci_low",
                                     "ci_high", "p", "mde", "se_time", "se_seed", "n_seeds",
                                     "I2"]].round(5)])
    outcomes = mc.component_outcomes(st["component_scores"])
    write_csv(out / "component_outcomes.csv", outcomes)
    yield Section("The original study's outputs: Δ over the response components, how many "
                  "improved, mean gain", "",
                  [_saved(mc.component_delta_plot(st["component_scores"], synthetic=syn),
                          out / "component_deltas.png"), outcomes.round(5)])
    yield _matrix_dose(run, st, head, syn, out)
    yield Section("Δ (sft − raw) by layer", "", [
        _saved(mc.layer_delta_plot(st["layer_deltas"], head, syn), out / "layer_deltas.png")
        if "layer_deltas" in st else "no layer profile of a fine-tuned model in this run"])
    yield Section("Δ per subject for every contrast", "",
                  [_saved(mc.delta_plot(st["deltas"], head, syn), out / "deltas.png")])
    yield Section("Brain scores of every model and baseline, with chance levels", "",
                  [_saved(mc.score_bars(st["scores"], head, syn), out / "scores.png")])
    yield Section("Per-component profile of r (raw and fine-tuned)", "",
                  [_saved(mc.component_profile(st["component_scores"], ("raw", "sft"),
                                               synthetic=syn), out / "components.png")])
    yield Section("Layer profile", "", [
        _saved(mc.layer_plot(st["layer_scores"], head, syn), out / "layers.png")
        if len(st["layer_scores"]) else "no layer profile in this run"])


def _saved(fig, path: Path):
    plots.save(fig, path)
    return fig


def _matrix_answer(st: dict, head: str, out: Path) -> Section:
    if "answer" in st:      # seeds averaged with their variance in the CI, subjects combined, MDE
        sentence = mc.answer_text(st["answer"], "sft - raw", head)
    else:
        n_seeds = st["deltas"].loc[st["deltas"].contrast == "sft - raw", "seed"].nunique()
        sentence = mc.answer(st["deltas"], "sft - raw", head, n_seeds)
    checks = mc.sanity(st["scores"], "raw", head)
    write_csv(out / "sanity.csv", checks)
    return Section(
        "Does fine-tuning change brain scores? (response matrices, per subject)",
        "With few subjects the subject cannot be the unit of inference. Within each subject, the "
        "unit is **held-out time**: Δ = score(SFT) − score(raw) on the same test TRs and "
        "targets, a 95% CI from the block-exchange test inverted, and a two-sided permutation p "
        "that exchanges the two models' predictions in blocks of TRs as long as a few "
        "autocorrelation times of the data (measured).",
        [f"**{sentence}**", mc.sanity_text(checks),
         st["deltas"][["subject", "contrast", "seed", "targets", "delta", "ci_low", "ci_high",
                       "p", "block_trs", "n_blocks"]].round(5)])


def _matrix_dose(run: Path, st: dict, head: str, syn: bool, out: Path) -> Section:
    title = "Dose-response: Δ as fine-tuning proceeds (checkpoints), with held-out perplexity"
    if "dose" not in st:
        return Section(title, "", ["no fine-tuning checkpoints in this run"])
    ppl_csv = run / "sft" / "perplexity.csv"
    dose = mc.dose_frame(st["dose"], pd.read_csv(ppl_csv) if ppl_csv.exists() else None)
    write_csv(out / "dose.csv", dose)
    return Section(title, "", [_saved(mc.dose_plot(dose, head, syn), out / "dose.png"),
                               st.get("trend", pd.DataFrame()).round(5)])


# --------------------------------------------------------------------------- volumes, surfaces
VOLUME_DELTA_COLUMNS = ["contrast", "target", "measure", "n_subjects", "n_improved", "mean_delta",
                 "ci95_low", "ci95_high", "p_sign_flip", "p_wilcoxon", "p_t", "cohens_dz",
                 "p_min_attainable", "n_seeds", "crossed_delta", "crossed_ci_low",
                 "crossed_ci_high", "crossed_p", "seed_sd", "mde", "seed_deltas"]


@dataclass
class _Volumes:
    """What every volume section reads: stage 05's outputs and the subject table."""
    run: Path
    st: dict
    tab: pd.DataFrame
    mask_img: object
    planted: np.ndarray | None
    synthetic: bool
    fdr_q: float
    stats: pd.DataFrame | None = None      # the contrasts' statistics, once computed

    @property
    def out(self) -> Path:
        return self.run / "compare"

    @property
    def tag(self) -> str:
        return plots.synthetic_tag(self.synthetic)


def volume_sections(run: Path, top_frac: float = 0.1, fdr_q: float = 0.05,
                    min_ceiling: float = 0.1) -> Iterator[Section]:
    """Paired comparisons across subjects (the unit of inference), ROIs, maps, the partition,
    penalties and the layer profile."""
    from . import geometry

    st = compare.load_stage05(run / "brain_score")
    mask_img = geometry.load_geometry(run / "brain_score")     # a volume's mask, or a mesh's
    synthetic = _synthetic(st["scores"])
    planted = None
    if synthetic:
        from .synthetic import truth_for_run

        truth = truth_for_run(run)
        planted = (truth["planted_vertices"][mask_img.mask] if geometry.is_surface(mask_img)
                   else truth["planted_in_mask"]).astype(bool)
    v = _Volumes(run, st, compare.subject_table(st, top_frac, planted, min_ceiling), mask_img,
                 planted, synthetic, fdr_q)
    yield _volume_deltas(v, top_frac, min_ceiling)
    yield _volume_rois(v)
    yield _volume_paired(v)
    yield _volume_distribution(v)
    yield _volume_maps(v)
    yield _volume_random_effects(v)
    yield _volume_partition(v)
    yield _volume_alphas(v)
    yield _volume_layers(v)
    yield Section("Fine-tuning record", "", [compare.sft_summary(run / "sft" / "models.csv")])


def _volume_deltas(v: _Volumes, top_frac: float, min_ceiling: float) -> Section:
    stats = pd.concat([compare.contrast_table(v.tab, value=m)[1] for m in compare.MEASURES],
                      ignore_index=True)
    deltas = compare.contrast_table(v.tab)[0]
    stats, seed_scores = compare.with_crossed(stats, v.st, top_frac, v.planted, min_ceiling)
    v.stats = stats
    write_csv(v.out / "subject_scores.csv", v.tab)
    if len(seed_scores):
        write_csv(v.out / "seed_scores.csv", seed_scores)
    write_csv(v.out / "delta_subjects.csv", deltas)
    write_csv(v.out / "stats.csv", stats)
    table = stats[[c for c in VOLUME_DELTA_COLUMNS if c in stats]].round(4)
    write_csv(v.out / "delta_table.csv", table)
    return Section(
        "Δ brain score (SFT − raw and controls), statistics across subjects",
        "Paired comparisons across subjects, the unit of inference (runs averaged within a "
        "story, stories equally, then seeds): subjects improved, mean Δ with a Student-t 95% CI, "
        "exact sign-flip permutation p (and Wilcoxon, t, Cohen's d_z), with the smallest p the "
        "sign tests can reach. Each measure three ways: r, r above its chance level, and "
        "r / noise ceiling. Voxel summaries select voxels without any model's map "
        "(`voxels_reliable`: group ISC significant; `voxels_top10pct`: the other subjects' "
        "noise ceiling), so they favour neither model.",
        [f"**{compare.headline(stats, synthetic=v.synthetic)}**",
         "SYNTHETIC BOLD" if v.synthetic else "real BOLD",
         table[table.measure == "brain_score"],
         "The same Δ above chance and normalised by the noise ceiling:",
         table[table.measure != "brain_score"].dropna(subset=["mean_delta"])])


def _volume_rois(v: _Volumes) -> Section:
    roi_table = compare.roi_summary(v.tab, v.stats)
    items = ["no named ROI in this run (roi_atlas: null)"]
    if len(roi_table):
        write_csv(v.out / "roi_table.csv", roi_table)
        items = [_saved(plots.roi_scores(v.tab, ("raw", "sft"), v.synthetic),
                        v.out / "roi_scores.png"), roi_table]
    return Section("Named language ROIs (Harvard-Oxford, left and right)",
                   "Brain score of each model per ROI (mean BOLD of the ROI as the target), and "
                   "Δ (SFT − raw) tested across subjects, with Benjamini-Hochberg q across the "
                   "ROIs (`q_roi`).", items)


def _volume_paired(v: _Volumes) -> Section:
    return Section("Per subject: raw → SFT", "", [
        _saved(plots.paired_scores(v.tab, t, "raw", "sft", v.synthetic),
               v.out / f"paired_{t}.png") for t in ("whole_brain_mean", "voxels_reliable")])


def _volume_distribution(v: _Volumes) -> Section:
    reliable = compare.reliable_voxels(v.st["voxels"])
    vd = compare.voxel_delta(v.st["voxels"], "sft", "raw")
    vsum = compare.voxel_delta_summary(vd, reliable)
    write_csv(v.out / "voxel_delta_summary.csv", vsum)
    return Section("Distribution of Δ over voxels (SFT − raw, seeds averaged as in the Δ table)",
                   "The summary over selected voxels uses the ISC-reliable voxels (the response "
                   "to the story is reliable across subjects), never voxels significant for "
                   "either model: selecting on a model's map would favour it.",
                   [_saved(plots.delta_distribution(vd, reliable, "sft - raw", v.synthetic),
                           v.out / "delta_distribution.png"), vsum])


def _volume_maps(v: _Volumes) -> Section:
    # one section: the FDR maps, Δ in the reliable voxels, the surface and the 3-D viewers
    # share one colour scale (vmax) and the images they are drawn from
    g, out, tag = v.st["group"], v.out, v.tag
    reliable = compare.reliable_voxels(v.st["voxels"])
    vd = compare.voxel_delta(v.st["voxels"], "sft", "raw")
    imgs, items = {}, []
    for cond in ("raw", "sft"):
        if f"{cond}_score" in g:
            imgs[cond] = plots.to_img(np.where(g[f"{cond}_fdr"], g[f"{cond}_score"], 0),
                                      v.mask_img)
    dmean = np.nanmean(list(vd.values()), 0) if vd else None
    if vd:
        imgs["delta"] = plots.to_img(np.where(reliable, dmean, 0) if reliable is not None
                                     else dmean, v.mask_img)
    vmax = max([float(np.abs(i.get_fdata()).max()) for k, i in imgs.items() if k != "delta"]
               + [1e-3])
    for k, img in imgs.items():
        plots.save_img(img, out / f"group_{k}.nii.gz")
        title = (f"{k}: group brain score (FDR q<{v.fdr_q}){tag}" if k != "delta"
                 else f"Δ sft − raw in ISC-reliable voxels{tag}")
        items.append(_saved(plots.stat_map(img, title, vmax=vmax if k != "delta" else None),
                            out / f"map_{k}.png"))
        items.append(_saved(plots.glass_brain(img, title, vmax=vmax if k != "delta" else None),
                            out / f"glass_{k}.png"))
    if "raw" in imgs:
        items.append(_saved(plots.surface(imgs["raw"], f"raw model on fsaverage5{tag}",
                                          vmax=vmax), out / "surface_raw.png"))
    for k, name in (("raw", "raw: r"), ("delta", "Δr sft − raw")):
        if k in imgs:   # the FDR map, or -- when nothing survives -- the unthresholded one
            full = plots.to_img(g[f"{k}_score"] if k != "delta" else dmean, v.mask_img)
            plots.save_view_img(imgs[k], out / f"view_{k}.html",
                                name + (" [synthetic]" if v.synthetic else ""), fallback=full,
                                vmax=vmax if k != "delta" else None)
    return Section("Brain maps",
                   f"Group-mean brain score of the raw and fine-tuned models (FDR q < "
                   f"{v.fdr_q}, block permutation), and Δ (SFT − raw) shown in the ISC-reliable "
                   f"voxels (selected by neither model).", items)


def _volume_random_effects(v: _Volumes) -> Section:
    g = v.st["group"]
    keys = sorted(k for k in g if "_re_" in k and "logp" in k)
    items = [_saved(plots.glass_brain(plots.to_img(g[k], v.mask_img),
                                      f"{k} (-log10 FWE p){v.tag}"), v.out / f"re_{k}.png")
             for k in keys]
    n = v.st["scores"].subject.nunique()
    return Section("Random-effects maps (nilearn second level, TFCE, FWE) — when there are "
                   "enough subjects", "", items or [
                       f"{n} subjects: too few for a random-effects map (the profile's "
                       f"re_min_subjects)"])


def _volume_partition(v: _Volumes) -> Section:
    out, tab = v.out, v.tab
    space_scores = tab[tab.target.isin(["whole_brain_mean", "voxels_mean", "voxels_reliable",
                                        "voxels_top10pct"])].pivot_table(
        index="condition", columns="target", values=["brain_score", "chance_score"]).round(4)
    write_csv(out / "space_scores.csv", space_scores.reset_index())
    items = [space_scores]
    ptab = compare.partition_table(v.st, v.planted)
    if len(ptab):
        write_csv(out / "partition_subjects.csv", ptab)
        psum = ptab.groupby(["target", "measure"]).r2.agg(["mean", "std", "count"]).round(5)
        write_csv(out / "partition_summary.csv", psum.reset_index())
        items += [_saved(plots.partition_bars(ptab, t, v.synthetic), out / f"partition_{t}.png")
                  for t in ("whole_brain_mean", "voxels_reliable", "voxels_mean",
                            "planted_roi_voxels") if t in set(ptab.target)]
        items.append(psum)
    if len(v.st["spaces_skipped"]):
        items.append(v.st["spaces_skipped"])
    g = v.st["group"]
    for k in sorted(k[:-len("_fdr")] for k in g if k.startswith("partition_")
                    and k.endswith("_fdr")):
        img = plots.to_img(np.where(g[f"{k}_fdr"], g[f"{k}_score"], 0), v.mask_img)
        name = k.replace("partition_", "").replace(":", " ")
        plots.save_img(img, out / f"group_{k.replace(':', '-')}.nii.gz")
        items.append(_saved(plots.glass_brain(img, f"{name}: group mean r|r|, FDR q<{v.fdr_q} "
                                                   f"({int(g[f'{k}_fdr'].sum())} voxels){v.tag}"),
                            out / f"glass_{k.replace(':', '-')}.png"))
    return Section(
        "Feature spaces and variance partitioning",
        "Brain score of each feature space alone (and its chance level), then the banded-ridge "
        "partition: what each space explains that the others do not (`unique`), what they "
        "share, and each space's share of the joint model's r|r|. A tested space's unique share "
        "against its conditional placebo (`unique_vs_placebo`) is what the across-subject test "
        "uses. Left-out spaces (missing audio, lexicon gaps) are listed, not silently dropped.",
        items)


def _volume_alphas(v: _Volumes) -> Section:
    alphas = pd.read_csv(v.run / "brain_score" / "alphas.csv")
    fig = plots.alpha_diagnostic(alphas, sorted(alphas.alpha.unique()), v.synthetic)
    edge = v.st["scores"].groupby("condition").alpha_edge_fraction.mean().round(3)
    return Section("Chosen ridge penalties", "",
                   [_saved(fig, v.out / "alpha_diagnostic.png"),
                    edge.to_frame("share of alpha choices at a real grid edge")])


def _volume_layers(v: _Volumes) -> Section:
    lp_path = v.run / "brain_score" / "layer_scores.csv"
    title = "Layer profile (when every layer was extracted: `layer_profile: true`)"
    if not lp_path.exists():
        return Section(title, "", ["no layer profile in this run (layer_profile: false)"])
    lp = compare.subject_scores(pd.read_csv(lp_path), keys=["layer"])
    write_csv(v.out / "layer_profile.csv", lp)
    items = []
    for target in sorted(lp.target.unique()):
        fig = plots.layer_profile(lp[lp.target == target], v.synthetic)
        fig.axes[0].set_title(f"Layer profile: {target}{v.tag}", fontsize=10)
        items.append(_saved(fig, v.out / f"layer_profile_{target}.png"))
    return Section(title, "", items)
