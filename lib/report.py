"""Run header and helpers for the master report ``total.ipynb``."""
from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path

import pandas as pd

from .paths import ROOT


#: what a run writes itself: never counted as "uncommitted changes" in the header
RUN_OUTPUTS = ("results", "data", "total.ipynb", "total.html", "total-code.html")


def git_commit(root: Path = ROOT) -> str:
    """Short commit, with "(uncommitted changes)" when tracked code, notebooks or profiles
    differ from it -- the run's own outputs (RUN_OUTPUTS) do not count."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "."] + [f":(exclude){p}" for p in RUN_OUTPUTS], cwd=root,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def params_table(params: dict) -> pd.DataFrame:
    """Every parameter of the run, once (the report hides papermill's parameter cells)."""
    rows = [(k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
            for k, v in sorted(params.items()) if k != "run_dir"]
    return pd.DataFrame(rows, columns=["parameter", "value"]).set_index("parameter")


def device_summary() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
        return f"CPU ({platform.processor() or platform.machine()}, torch {torch.__version__})"
    except ImportError:
        return "CPU"


def run_header(run_dir: str | Path, params: dict) -> pd.DataFrame:
    """Profile, models (with fingerprints), data provenance, date, commit, device."""
    run_dir = Path(run_dir)
    manifest = pd.read_csv(run_dir / "data" / "data_manifest.csv")
    synthetic = manifest["synthetic_bold"].astype(str).str.lower().eq("true").any()
    idx_path = run_dir / "features" / "activations_index.csv"
    models = ""
    if idx_path.exists():
        idx = pd.read_csv(idx_path)
        models = "; ".join(sorted({f"{r.condition}: {r.model} [{str(r.fingerprint)[:12]}]"
                                   for r in idx.itertuples()}))
    used = manifest[~manifest["excluded"].astype(str).str.lower().eq("true")]
    rows = [
        ("profile", params.get("profile", "?")),
        ("data", ("SYNTHETIC BOLD (narratives-mini: real pieman stimuli, generated BOLD)"
                  if synthetic else f"OpenNeuro ds002345 ({params.get('bold_source', 'raw')})")),
        ("subjects used", ", ".join(sorted(used["subject"].unique()))),
        ("scans excluded", "; ".join(f"{r.subject} {r.story} run-{r.run}: {r.exclusion_reason}"
                                     for r in manifest.itertuples()
                                     if str(r.excluded).lower() == "true") or "none"),
        ("stories", ", ".join(sorted(manifest["story"].unique()))),
        ("base model", params.get("model", "?")),
        ("layer", str(params.get("layer", "?"))),
        ("models (fingerprints)", models),
        ("SFT mode", params.get("sft_mode", "?")),
        ("date", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
        ("git commit", git_commit()),
        ("device", device_summary()),
    ]
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def load_params(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "params.json"
    return json.loads(p.read_text()) if p.exists() else {}


def scoring_units(scores: pd.DataFrame) -> str:
    """How many subjects are scored per block of story time and per held-out story. A profile
    that mixes single- and several-story subjects scores every held-out story per block
    (:func:`lib.job.score_blocks_of`), so its group means are in one unit; the noise ceiling
    of each subject is in the same unit."""
    scheme = scores.groupby("subject").fold_scheme.first()
    kind = scheme.map(lambda s: "blocks" if "blocks" in s else "whole story")
    n_blk, n_story = int((kind == "blocks").sum()), int((kind == "whole story").sum())
    n_held = int(scheme.str.startswith("leave-one-story-out").sum())
    text = (f"{n_blk} subject(s): mean r over blocks of story time; {n_story} subject(s): r of "
            f"each held-out story")
    if n_blk and n_held and not n_story:
        text += (f" ({n_held} of them held-out stories, each cut into the same blocks: one "
                 f"scoring unit for every subject)")
    if n_blk and n_story:
        text += " -- the group means mix the two units (per-block r drops the slow variance "
        text += "between blocks; their ceilings are in the same units)"
    return text


def method_table(run_dir: str | Path, params: dict) -> pd.DataFrame:
    """What was done, in one table: the score definition, folds, gap, null, ceiling and tests."""
    # long by design: one row per step of the method, read top to bottom like the table
    from .engine import DEFAULT_DELAYS, default_gap

    run_dir = Path(run_dir)
    sc_path = run_dir / "brain_score" / "scores.csv"
    scheme = gap = units = "?"
    if sc_path.exists():
        sc = pd.read_csv(sc_path, usecols=["subject", "fold_scheme", "gap"])
        scheme = "; ".join(sorted(sc.fold_scheme.unique()))
        gap = ", ".join(str(g) for g in sorted(sc.gap.unique()))
        units = scoring_units(sc)
    delays = params.get("delays", list(DEFAULT_DELAYS))
    n_perm = params.get("n_perm", 1000)
    manifest = run_dir / "data" / "data_manifest.csv"
    if manifest.exists():
        from .data import read_manifest, single_tr

        tr = single_tr(read_manifest(manifest))
        default = f"{default_gap(delays, tr)} TRs at TR {tr:g} s"
    else:
        default = "TRs at the run's TR"
    rows = [
        ("features", f"{params.get('model', '?')} layer {params.get('layer', '?')}, "
                     f"{params.get('context_tokens', '?')}-token windows starting with "
                     f"<|endoftext|>, {params.get('pooling', 'last')} sub-word token; text style "
                     f"{params.get('text_style', 'words')}"),
        ("word -> TR", f"{params.get('aggregation', 'sum')} of the words starting in the TR; "
                       f"FIR delays {delays} TRs"),
        ("TRs scored", f"from story onset + {params.get('trim_after_onset', 6)} TRs to the last "
                       f"word + {params.get('tail_trs', 8)} TRs, every run z-scored"),
        ("folds", f"{scheme} (leave one story out when a subject heard several; repeats of a "
                  f"story held out together)"),
        ("scoring unit", units),
        ("gap", f"{gap} TRs of story time dropped between training and test blocks "
                f"(default: max(delay) + 37.5 s of story time = {default})"),
        ("penalty", f"one per target from {len(params.get('alphas') or range(10))} alphas, "
                    f"chosen on {params.get('inner_folds', 4)} blocked inner folds (same gap), "
                    f"each standardised on its own fit rows"),
        ("brain score", "Pearson r of prediction vs held-out BOLD, per fold; mean over folds; "
                        "runs within a story averaged, stories equally, seeds averaged; the r of "
                        "concatenated predictions is a diagnostic column only"),
        ("chance level", "the same model on the same features shifted in time by half the story"
                         " (chance_score, next to every score)"),
        ("group null", f"{params.get('null_method', 'block')} permutation of story time "
                       f"({str(params['perm_block']) + '-TR' if params.get('perm_block') else '45-s'} blocks), the same for every subject, "
                       f"alphas reused (calibrated: docs/validity.md), {n_perm} permutations with "
                       f"Besag-Clifford stopping at 10 exceedances; BH-FDR q = "
                       f"{params.get('fdr_q', 0.05)}"),
        ("noise ceiling", "leave-one-subject-out ISC of z-scored BOLD, Spearman-Brown corrected "
                          "to one subject's ceiling; repeat-based sqrt(r(run-1, run-2)) where a "
                          "story was heard twice; normalised scores only where the ceiling >= "
                          "min_ceiling (NaN elsewhere); voxels: only the ISC-reliable ones, as "
                          "mean score / mean ceiling"),
        ("across subjects", "the subject is the unit: exact sign-flip permutation test, Student-t "
                            "95% CI, Wilcoxon and paired t, Cohen's d_z; with n "
                            "subjects no sign test can go below p = 2 / 2^n"),
        ("feature spaces", f"each alone: {', '.join(params.get('feature_spaces', ['word_rate']))}"
                           f" (word-level values aggregated like the LM's); banded ridge for the "
                           f"partition {params.get('partition') or '(none)'}: "
                           f"nested band weightings ({params.get('partition_n_iter', 20)} drawn per "
                           f"level; one per subject and outer fold, pooled over its targets; "
                           f"alphas per target), the same folds and inner folds, r selection; "
                           f"the unique share of each partition_null space against the joint "
                           f"fits with its conditional placebo (the part the other spaces "
                           f"explain kept, its residual shifted in time; 4 shifts), tested "
                           f"across subjects (one-sided sign flips)"),
        ("voxel summaries", "voxels_reliable: group ISC significant (BH-FDR) against independent "
                            "circular shifts of each subject; voxels_top10pct: the other subjects' "
                            "noise ceiling; voxels_mean: the whole mask -- no model's map selects"),
    ]
    return pd.DataFrame(rows, columns=["step", "what was done"]).set_index("step")


def score_definitions() -> pd.DataFrame:
    """What each number in the report is: its formula, its TRs and its folds."""
    rows = [
        ("brain_score", "Pearson r of held-out prediction vs BOLD, per fold; mean over folds",
         "kept TRs of each run (onset + 6 .. last word + 8)",
         "blocked folds (leave one story out / contiguous story-time blocks with a gap)"),
        ("chance_score", "the same, for the same features shifted in time by half the story",
         "as brain_score", "as brain_score"),
        ("null_mean", "group tests: the mean of the group score's own block-permutation null "
                      "(its first 100 orders, none stopped early): a chance level of the group "
                      "score, a diagnostic", "as brain_score", "as brain_score"),
        ("above_chance", "brain_score - chance_score", "as brain_score", "as brain_score"),
        ("normalised_score", "brain_score / noise ceiling (ceiling >= min_ceiling, else NaN); "
                             "voxels_reliable: mean r / mean ceiling over those voxels",
         "as brain_score", "ceiling: all subjects of the story (LOSO ISC, Spearman-Brown)"),
        ("concat_r_diag", "r of all folds' predictions concatenated (training means added back);"
                          " biased by per-fold intercepts -- a diagnostic, not a score",
         "as brain_score", "as brain_score"),
        ("R² (partition)", "r|r|: the signed square of the banded model's held-out r (mean "
                           "over folds, as brain_score); scale-free: no shrinkage of the "
                           "predictions changes it", "as brain_score", "as brain_score"),
        ("unique:<space>", "R²(all spaces) - R²(all but <space>)", "as brain_score",
         "as brain_score"),
        ("unique_vs_placebo:<space>", "R²(all spaces) - mean R²(all spaces, <space> replaced by "
                                      "its ridge fit on the other spaces plus its residual "
                                      "circularly shifted in time; 4 shifts): the tested share",
         "as brain_score", "as brain_score"),
        ("shared", "R²(all spaces) - sum of the unique R²", "as brain_score", "as brain_score"),
        ("split:<space>", "|r| x the space's share of the joint r, cov(prediction of the space, "
                          "BOLD) / (sd(joint prediction) sd(BOLD)): the shares add up to the "
                          "joint r|r|", "as brain_score", "as brain_score"),
        ("subject value", "runs averaged within a story, stories with equal weight, then seeds",
         "", ""),
        ("group value", "mean over subjects; p from block permutations of story time (the same "
                        "for every subject), FDR over voxels", "", ""),
    ]
    return pd.DataFrame(rows, columns=["quantity", "definition", "TRs", "folds"]
                        ).set_index("quantity")


def figure(path, caption: str) -> None:
    """Show a saved figure with its caption (what is plotted, and the threshold)."""
    from IPython.display import Image, Markdown, display

    if Path(path).exists():
        display(Image(filename=str(path)))
        display(Markdown(f"*{caption}*"))


def real_data_sentence(run_dir: str | Path, params: dict) -> str:
    """What the real-data part rests on: the data, its licence, the split and the stories used
    (counted from the run's manifest)."""
    m = pd.read_csv(Path(run_dir) / "data" / "data_manifest.csv", keep_default_na=False)
    m = m[m.subject == m.subject.iloc[0]]
    n_train, tests = (m.split == "train").sum(), sorted(m.loc[m.split == "test", "story"])
    cap = params.get("max_train_stories")
    budget = (f" (the first {n_train} of the dataset's 27 training stories: the time budget of "
              f"`make report`; the `lebel-full` profile uses all 27)" if cap else "")
    k = params.get("outer_folds")
    design = (f"Every one of the {len(m)} stories is held out once ({k} folds of whole stories; "
              f"penalties chosen on groups of training stories inside each fold), so the scores "
              f"rest on {int(m.n_trs.sum() - m.trim_start.sum() - m.trim_end.sum())} held-out "
              f"TRs per subject; the {len(tests)} test stories ({', '.join(tests)}) are "
              f"responses averaged over repeated presentations (less noisy), and every story "
              f"counts equally in a score." if k else
              f"Models are fitted on {n_train} training stories{budget} and scored on the "
              f"dataset's {len(tests)} test stories ({', '.join(tests)}), whose responses are "
              f"averaged over repeated presentations.")
    return (f"> **REAL fMRI.** LeBel et al. 2023, *A natural language fMRI dataset for voxelwise "
            f"encoding models* (OpenNeuro ds003020, CC0): whole-cortex BOLD of "
            f"{pd.read_csv(Path(run_dir) / 'data' / 'data_manifest.csv').subject.nunique()} "
            f"subjects listening to Moth stories, as the first 200 spatial principal components "
            f"of each subject's responses (shipped in `data/lebel`, see its README), TR "
            f"{m.tr.iloc[0]:g} s. {design}")


def provenance_sentence(run_dir: str | Path) -> str:
    """Where committed results came from: ``PROVENANCE.json`` beside them (command, machine,
    date, commit, time from scratch)."""
    f = Path(run_dir) / "PROVENANCE.json"
    if not f.exists():
        return f"> `{run_dir}`: no PROVENANCE.json (results of unknown origin)."
    p = json.loads(f.read_text())
    return (f"> **Committed results** of `{p['command']}`, run on {p['machine']} on {p['date']} "
            f"at commit `{p['commit']}` ({p['wall']} from scratch). `make report` does not "
            f"recompute them; it recomputes the quick profile below and compares.")


def sft_sentence(models: pd.DataFrame, perplexity_csv: str | Path | None = None) -> str:
    """How the fine-tuned models were made: corpus, tokens seen, epochs, seeds, and the
    perplexity on the scored stories before and after."""
    sft = models[models.condition == "sft"]
    if sft.empty:
        return "No fine-tuned model in this run."
    r = sft.iloc[0]
    n_train = len(str(r.train_stories).split(","))
    seeds = sorted(sft.seed.unique())
    headline = models[~models.condition.astype(str).str.contains("@")]
    controls = sorted(set(headline.condition) - {"sft"})
    out = (f"Fine-tuning: {r.condition} and the controls ({', '.join(controls)}) "
           f"each saw {int(r.train_tokens_seen)} tokens = {float(r.epochs):.2f} epochs of "
           f"{n_train} Narratives stories (none of the scored stories: one fine-tuned model per "
           f"seed scores every story); seed{'s' if len(seeds) > 1 else ''} "
           f"{', '.join(map(str, seeds))}.")
    ck = models[models.condition.astype(str).str.contains("@")]
    if len(ck):
        steps = sorted(set(ck.step.astype(int)) | {int(r.step)})
        out += (f" Checkpoints of the same runs (dose-response) after "
                f"{', '.join(map(str, steps))} steps, for seed{'s' if ck.seed.nunique() > 1 else ''}"
                f" {', '.join(map(str, sorted(ck.seed.unique())))}.")
    if "precision" in sft:
        precs = sorted(set(models.precision.dropna()))
        words = {"bf16": "bf16 mixed precision (fp32 weights, bf16 products)", "fp32": "fp32"}
        out += (f" Trained in {' and '.join(words.get(p, p) for p in precs)}: the profile's "
                f"`sft_precision` (`auto` takes bf16 where the hardware has it), so a machine "
                f"with another precision trains slightly different models.")
    if len(seeds) == 1:
        out += (" With one seed, the variability between fine-tuned models is not in the "
                "intervals above.")
    p = Path(perplexity_csv) if perplexity_csv else None
    if p is not None and p.exists():
        ppl = pd.read_csv(p)
        ppl = ppl[~ppl.model.astype(str).str.contains("@")].groupby("model", sort=False
                                                                     ).perplexity.mean()
        out += (" Perplexity on the held-out test stories" +
                (" (mean over seeds)" if len(seeds) > 1 else "") + ": " +
                ", ".join(f"{k} {v:.1f}" for k, v in ppl.items()) + ".")
    return out
