"""Stage 05's Δ tables for response matrices: the answer, the dose-response and Δ by layer.

All of them compare two models' held-out predictions of the same subject on the same TRs
(:mod:`lib.engine.paired`: Δ is a sum of block contributions over held-out time). Written by
:func:`write_tables`:

* ``answer.csv`` -- per contrast, set of targets and subject, then ``combined`` (these subjects,
  fixed effect): Δ averaged over the fine-tuning seeds with a CI that holds both the
  time-sampling and the between-seed variance, p, and the minimum detectable effect at 80% power
  (:mod:`lib.engine.combine`). The unit of inference is held-out time within each subject; the
  combined row pools the subjects' time variance and adds the shared seeds' variance once.
* ``dose.csv`` -- every fine-tuning checkpoint (``sft@24``, ...; the headline's own step
  included) against the raw model, and sft against each control at the same step, for the seeds
  that have every checkpoint, on one cut of blocks per subject and contrast.
* ``trend.csv`` -- the slope of those Δs over log2(tokens seen), with its block SE.
* ``layer_deltas.csv`` -- Δ(sft - raw) at every layer of the layer profile (same seed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_csv
from .data import DataError
from .engine import (block_contributions, choose_unit, exchange_unit_of, fit_difference,
                     fixed_effect, inverted_ci, paired_comparison, seed_interval, sign_flip_p,
                     trend)
from .matrix_encoding import MatrixJob, load, subject_responses, target_sets
from .sft import split_checkpoint

ANSWER_COLUMNS = ["contrast", "targets", "subject", "n_targets", "delta", "ci_low", "ci_high",
                  "p", "se", "se_time", "se_seed", "df", "mde", "n_seeds", "seed_deltas",
                  "n_trs", "exchange_unit", "n_blocks", "Q", "Q_p", "I2", "scope"]


def _seeds(conditions, name: str) -> list[int]:
    return sorted(s for c, s in conditions if c == name)


def _pairing(conditions, a: str, b: str) -> list[tuple[int, int]]:
    """(seed of a, seed of b) pairs: the same seed where b has it, else b's only model."""
    bs = _seeds(conditions, b)
    if not bs:
        return []
    return [(s, s if s in bs else bs[0]) for s in _seeds(conditions, a)]


class _Subject:
    """One subject's responses and the held-out predictions of its units, read once."""

    def __init__(self, job: MatrixJob, subject: str):
        self.job, self.subject = job, subject
        Y, stories = subject_responses(job, subject)
        self.Y, self.stories, self._cache = Y, np.asarray(stories), {}

    def unit(self, cond: str, seed: int) -> dict:
        if (cond, seed) not in self._cache:
            self._cache[(cond, seed)] = load(self.job, cond, seed, self.subject)
        return self._cache[(cond, seed)]

    def rows(self, cond: str, seed: int) -> np.ndarray:
        return self.unit(cond, seed)["rows"]

    def y(self, rows) -> np.ndarray:
        return self.Y[rows]

    def seg(self, rows) -> np.ndarray:
        return self.stories[rows]


def _differences(S: _Subject, pairs: list[tuple[tuple, tuple]], cols) -> tuple:
    """(d per pair (P, rows), story of each row): d(t) of every (a, b) model pair, checked to
    share the held-out rows."""
    rows = S.rows(*pairs[0][0])
    ds = []
    for a, b in pairs:
        A, B = S.unit(*a), S.unit(*b)
        if not (np.array_equal(A["rows"], rows) and np.array_equal(B["rows"], rows)):
            raise DataError(f"{S.subject}: {a} and {b} were scored on different TRs")
        ds.append(fit_difference(S.y(rows), A["pred"], B["pred"], S.seg(rows), cols))
    return np.asarray(ds), S.seg(rows)


def _blocks(ds: np.ndarray, seg: np.ndarray) -> tuple:
    """One exchange unit for all of ``ds`` (from their mean), and each one's contributions."""
    L = choose_unit(ds.mean(0), seg)
    terms = [block_contributions(d, seg, L) for d in ds]
    return L, np.asarray([t[0] for t in terms]), terms[0][1], terms[0][2]


def answer_table(job: MatrixJob, conditions, subjects: dict | None = None) -> pd.DataFrame:
    """Per contrast of ``job.settings.contrasts``, set of targets and subject: Δ averaged over
    the seeds (:func:`lib.engine.combine.seed_interval`), then the subjects combined
    (:func:`lib.engine.combine.fixed_effect`) where there are two or more."""
    subjects = subjects or {s: _Subject(job, s) for s in sorted(job.runs.subject.unique())}
    out = []
    for a, b in job.settings.contrasts:
        pairs = [((a, sa), (b, sb)) for sa, sb in _pairing(conditions, a, b)]
        if not pairs:
            continue
        some = next(iter(subjects.values()))
        for name, cols in target_sets(job.settings, some.unit(*pairs[0][0])["pred"].shape[1]
                                      ).items():
            per = []
            for sub, S in subjects.items():
                ds, seg_rows = _differences(S, pairs, cols)
                L, c, w, seg = _blocks(ds, seg_rows)
                r = seed_interval(c, w, seg)
                per.append(r)
                out.append(dict(_row(r), contrast=f"{a} - {b}", targets=name, subject=sub,
                                n_targets=len(cols), n_trs=len(seg_rows),
                                exchange_unit=exchange_unit_of(L, seg_rows),
                                scope="held-out time within the subject"))
            if len(per) >= 2:
                r = fixed_effect(per)
                out.append(dict(_row(r), contrast=f"{a} - {b}", targets=name,
                                subject="combined", n_targets=len(cols),
                                n_trs=int(sum(o["n_trs"] for o in out[-len(per):])),
                                exchange_unit=out[-1]["exchange_unit"],
                                n_blocks=sum(p["n_blocks"] for p in per),
                                Q=r["Q"], Q_p=r["Q_p"], I2=r["I2"],
                                scope=f"these {len(per)} subjects (fixed effect), not a "
                                      f"population"))
    return pd.DataFrame(out, columns=ANSWER_COLUMNS)


def _row(r: dict) -> dict:
    keep = ("delta", "ci_low", "ci_high", "p", "se", "se_time", "se_seed", "df", "mde",
            "n_seeds", "n_blocks")
    return dict({k: r.get(k, np.nan) for k in keep},
                seed_deltas=" ".join(f"{v:+.5f}" for v in r["seed_deltas"]))


# --------------------------------------------------------------------------- dose-response
def checkpoint_steps(models_csv: str | Path) -> dict[str, tuple[int, int]]:
    """``{condition: (step, tokens seen)}`` of stage 04's models (``models.csv``; empty when
    there is none, or it records no steps)."""
    if not Path(models_csv).exists():
        return {}
    m = pd.read_csv(models_csv)
    if "step" not in m:
        return {}
    return {c: (int(g.step.iloc[0]), int(g.train_tokens_seen.iloc[0]))
            for c, g in m.groupby("condition")}


def checkpoints(conditions, steps: dict) -> dict[str, list[tuple[str, int, int]]]:
    """kind -> [(condition, step, tokens seen)] in step order, for every fine-tuned kind with
    checkpoints; ``steps``: condition -> (step, tokens seen) of the models table."""
    names = {c for c, _ in conditions}
    kinds: dict[str, list] = {}
    for c in names:
        base, step = split_checkpoint(c)
        if step is not None and c in steps:
            kinds.setdefault(base, [])
    for base in kinds:
        for c in names:
            if split_checkpoint(c)[0] == base and c in steps:
                kinds[base].append((c, int(steps[c][0]), int(steps[c][1])))
        kinds[base].sort(key=lambda t: t[1])
    return kinds


def dose_tables(job: MatrixJob, conditions, steps: dict, subjects: dict | None = None,
                n_exchanges: int = 10000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dose, trend): per subject, family of contrasts (each kind against raw; sft against each
    control at the same step), checkpoint and set of targets: Δ with its block CI and p, on one
    cut of blocks per subject, family and set; then the slope over log2(tokens seen)."""
    subjects = subjects or {s: _Subject(job, s) for s in sorted(job.runs.subject.unique())}
    kinds = checkpoints(conditions, steps)
    have = set(conditions)
    families = [(f"{k} - raw", [((c, None), ("raw", 0)) for c, _, _ in kinds[k]])
                for k in sorted(kinds, key=lambda k: (k != "sft", k))]
    if "sft" in kinds:
        for ctl in (k for k in kinds if k != "sft"):
            ctl_at = {st: c for c, st, _ in kinds[ctl]}
            families.append((f"sft - {ctl}", [((c, None), (ctl_at[st], None))
                                              for c, st, _ in kinds["sft"] if st in ctl_at]))
    families = [(f, p) for f, p in families if p]
    step_of = {c: (st, tok) for k in kinds for c, st, tok in kinds[k]}
    dose, slopes = [], []
    for fam, pairs0 in families:
        seeds = sorted(set.intersection(*[set(_seeds(conditions, a[0])) for a, _ in pairs0]))
        for seed in seeds:
            pairs = [((a[0], seed), (b[0], seed if b[1] is None else b[1])) for a, b in pairs0]
            if not all(p in have for pr in pairs for p in pr):
                continue
            for sub, S in subjects.items():
                n_t = S.unit(*pairs[0][0])["pred"].shape[1]
                for name, cols in target_sets(job.settings, n_t).items():
                    ds, seg_rows = _differences(S, pairs, cols)
                    L, c, w, seg = _blocks(ds, seg_rows)
                    for (a, _), ck in zip(pairs, c):
                        lo, hi = inverted_ci(ck, w, seg, n_perm=n_exchanges, seed=seed)
                        st, tok = step_of[a[0]]
                        dose.append(dict(subject=sub, contrast=fam, seed=seed, targets=name,
                                         condition=a[0], step=st, tokens=tok,
                                         delta=float(ck.sum()), ci_low=lo, ci_high=hi,
                                         p=sign_flip_p(ck, seg, n_exchanges, seed),
                                         exchange_unit=exchange_unit_of(L, seg_rows)))
                    if len(pairs) >= 3:
                        r = trend(c, [step_of[a[0]][1] for a, _ in pairs], w, seg)
                        slopes.append(dict(subject=sub, contrast=fam, seed=seed, targets=name,
                                           slope_per_doubling=r["slope"], ci_low=r["ci_low"],
                                           ci_high=r["ci_high"], p=r["p"], se=r["se"],
                                           n_checkpoints=r["n_checkpoints"],
                                           exchange_unit=exchange_unit_of(L, seg_rows),
                                           variance="held-out time (one seed's trajectory)"))
    return pd.DataFrame(dose), pd.DataFrame(slopes)


def layer_table(job: MatrixJob, conditions, a: str = "sft", b: str = "raw",
                n_exchanges: int = 10000, subjects: dict | None = None) -> pd.DataFrame:
    """Δ(a - b) at every layer both have in their layer profiles (same seed as a's first),
    per subject and set of targets, with the block CI and p."""
    out = []
    pairs = [p for p in _pairing(conditions, a, b)]
    for sub in sorted(job.runs.subject.unique()):
        S = (subjects or {}).get(sub) or _Subject(job, sub)
        Y, stories = S.Y, S.stories
        for sa, sb in pairs:
            A, B = (load(job, c, s, sub, layers=True) for c, s in ((a, sa), (b, sb)))
            if "layer_pred" not in A or "layer_pred" not in B:
                continue
            common = sorted(set(A["layers"].tolist()) & set(B["layers"].tolist()))
            ia = {int(v): i for i, v in enumerate(A["layers"])}
            ib = {int(v): i for i, v in enumerate(B["layers"])}
            rows = A["rows"]
            for layer in common:
                res = paired_comparison(Y[rows], A["layer_pred"][ia[layer]],
                                        B["layer_pred"][ib[layer]], stories[rows],
                                        target_sets(job.settings, Y.shape[1]), n_perm=n_exchanges,
                                        seed=sa)
                res.insert(0, "subject", sub)
                res.insert(1, "contrast", f"{a} - {b}")
                res.insert(2, "seed", sa)
                res.insert(3, "layer", layer)
                out.append(res)
            break                   # one seed: the layer profile's
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def write_tables(job: MatrixJob, conditions, steps: dict | None = None) -> dict:
    """Every table of this module, written under the stage's folder."""
    subjects = {s: _Subject(job, s) for s in sorted(job.runs.subject.unique())}
    res = dict(answer=answer_table(job, conditions, subjects))
    if steps:
        res["dose"], res["trend"] = dose_tables(job, conditions, steps, subjects,
                                                job.settings.n_exchanges)
    res["layer_deltas"] = layer_table(job, conditions, n_exchanges=job.settings.n_exchanges,
                                      subjects=subjects)
    for k, v in res.items():
        write_csv(Path(job.out_dir) / f"{k}.csv", v)
    return res
