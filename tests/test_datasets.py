"""Dataset adapters: the LeBel files shipped with the project, a generic ROI-series dataset and a
generic NIfTI dataset built here, and clear errors (naming the file, nothing written) on bad input."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import datasets
from lib.data import DataError, write_manifest
from lib.datasets.words import read_words

REPO = Path(__file__).resolve().parent.parent
LEBEL = REPO / "data" / "lebel"
PIEMAN = REPO / "data" / "narratives" / "stimuli" / "pieman" / "align.csv"


def test_lebel_manifest_and_words_per_tr():
    m = datasets.lebel_manifest(LEBEL)
    assert len(m) == 60 and set(m.subject) == {"UTS01", "UTS03"}
    assert (m.tr == 2.0045).all() and (m.responses == "matrix").all()
    assert set(m.loc[m.split == "test", "story"]) == {
        "wheretheressmoke", "fromboyhoodtofatherhood", "onapproachtopluto"}
    row = m[(m.subject == "UTS03") & (m.story == "wheretheressmoke")].iloc[0]
    words = read_words(row.words_path, row.tr, row.n_trs)
    with np.load(row.words_path) as z:
        per_tr = z["words"]
    assert words.tr.max() < row.n_trs and words.onset.isna().all()
    assert " ".join(words.word) == " ".join(" ".join(per_tr).split())
    assert np.bincount(words.tr, minlength=row.n_trs).tolist() == [len(s.split()) for s in per_tr]
    few = datasets.lebel_manifest(LEBEL, max_train_stories=2)
    assert few.story.nunique() == 5 and (few.split == "test").sum() == 6


# --------------------------------------------------------------------------- a generic dataset
def hrf_word_rate(counts, lag=2):
    k = np.array([0, 0.4, 1.0, 0.7, 0.3, 0.1])
    return np.convolve(counts, k)[:len(counts)]


def make_generic_roi(root: Path, tr=2.0, n_trs=(160, 150, 140), subjects=("S1", "S2"),
                     n_rois=6, planted=(0, 1), seed=0, split=True):
    """Three stories cut from pieman's words (about 3 words per TR, with silences), TR-level
    word tables, and ROI series: planted ROIs follow the HRF-convolved word rate (SYNTHETIC)."""
    rng = np.random.default_rng(seed)
    words = pd.read_csv(PIEMAN, header=None)[0].astype(str).tolist()
    root.mkdir(parents=True, exist_ok=True)
    rows, at = [], 0
    for i, n in enumerate(n_trs):
        story = f"story{i}"
        per_tr = []
        for t in range(n):
            k = 0 if rng.random() < 0.15 else int(rng.integers(1, 6))
            per_tr.append(words[at % len(words):at % len(words) + k])
            at += k
        table = pd.DataFrame([(w, t) for t, ws in enumerate(per_tr) for w in ws],
                             columns=["word", "tr"])
        table.to_csv(root / f"{story}_words.tsv", sep="\t", index=False)
        rate = np.array([len(ws) for ws in per_tr], float)
        drive = hrf_word_rate(rate)
        drive = (drive - drive.mean()) / drive.std()
        for s in subjects:
            noise = np.zeros((n, n_rois))
            e = rng.standard_normal((n, n_rois))
            for t in range(1, n):
                noise[t] = 0.9 * noise[t - 1] + np.sqrt(1 - 0.81) * e[t]
            Y = noise.copy()
            Y[:, list(planted)] += 1.0 * drive[:, None]
            np.save(root / f"{s}_{story}.npy", Y.astype(np.float32))
            rows.append(dict(subject=s, story=story, responses=f"{s}_{story}.npy",
                             words=f"{story}_words.tsv", tr=tr,
                             split=("test" if i == len(n_trs) - 1 else "train") if split else ""))
    pd.DataFrame(rows).to_csv(root / "runs.tsv", sep="\t", index=False)
    return root


def test_generic_roi_manifest(tmp_path):
    root = make_generic_roi(tmp_path / "roi")
    m = datasets.generic_manifest(root)
    assert len(m) == 6 and (m.tr == 2.0).all() and (m.responses == "matrix").all()
    assert m.loc[m.story == "story2", "split"].eq("test").all()


@pytest.mark.slow
def test_generic_roi_dataset_runs_stages_01_to_06_and_recovers_the_planted_rois(
        tmp_path, project_root):
    from conftest import profile_args, run_pipeline

    root = make_generic_roi(tmp_path / "roi")
    args = profile_args("generic-roi", dataset="generic", bids_root=root, subjects="all",
                        stories="null", sft_mode="external", sft_steps=2, delays="[1, 2, 3, 4]",
                        target_sets="{planted: 2, all: 0}", n_perm=500, inner_groups=2,
                        layer_profile="false", feature_spaces="[word_rate]")
    p = run_pipeline(args, project_root)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = project_root / "results" / "generic-roi"
    assert (run / "notebooks" / "06_compare.ipynb").exists()
    comp = pd.read_csv(run / "brain_score" / "component_scores.csv")
    wr = comp[comp.condition == "word_rate"].groupby("target").brain_score.mean()
    # one held-out story of 140 TRs: unplanted ROIs' r is AR(0.9) noise (SD ~0.25)
    assert wr[[0, 1]].min() > 0.5 and wr[[0, 1]].min() > wr[[2, 3, 4, 5]].abs().max() + 0.2, wr
    scores = pd.read_csv(run / "brain_score" / "scores.csv")
    s = scores[(scores.condition == "word_rate") & (scores.targets == "planted")]
    assert (s.brain_score > s.chance_score + 0.2).all()
    deltas = pd.read_csv(run / "brain_score" / "deltas.csv")
    assert {"sft - raw", "sft - control"} <= set(deltas.contrast)
    assert deltas.ci_low.le(deltas.delta).all() and deltas.p.between(0, 1).all()


def _nifti_dataset(root: Path, heard: dict, seed: int = 3):
    """A generic NIfTI dataset at TR 1.0 s: pieman's timed words (for a story other than
    pieman, the same timings with the words in another order: another stimulus), one SYNTHETIC
    BOLD run per (subject, story) of ``heard``, word rate planted in 4 voxels. Returns
    (manifest, TRs per run)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    root.mkdir()
    words = pd.read_csv(PIEMAN, header=None, names=["word", "aligned", "onset", "offset"])
    words = words.dropna()[["word", "onset", "offset"]]
    for story in sorted({st for sts in heard.values() for st in sts}):
        w = words if story == "pieman" else words.assign(word=rng.permutation(words.word.values))
        w.to_csv(root / f"{story}_words.tsv", sep="\t", index=False)
    n = int(words.onset.max()) + 12
    rate = np.bincount(np.floor(words.onset).astype(int), minlength=n).astype(float)
    drive = hrf_word_rate(rate)
    shape, aff = (4, 4, 3), np.diag([3, 3, 3, 1])
    planted = np.zeros(shape, bool)
    planted[:2, :2, 0] = True
    rows = []
    for s, stories in heard.items():
        for story in stories:
            data = rng.standard_normal(shape + (n,)).astype(np.float32)
            data[planted] += 2.0 * ((drive - drive.mean()) / drive.std())
            nib.save(nib.Nifti1Image(data, aff), root / f"{s}_{story}_bold.nii.gz")
            (root / f"{s}_{story}_bold.json").write_text(json.dumps({"RepetitionTime": 1.0}))
            rows.append(dict(subject=s, story=story, responses=f"{s}_{story}_bold.nii.gz",
                             words=f"{story}_words.tsv"))
    pd.DataFrame(rows).to_csv(root / "runs.tsv", sep="\t", index=False)
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), aff), root / "mask.nii.gz")
    nib.save(nib.Nifti1Image(planted.astype(np.uint8), aff), root / "planted.nii.gz")
    return datasets.generic_manifest(root), n


def _stage05(m, root: Path, run: Path, stories: list[str]):
    import nibabel as nib

    from conftest import fake_index
    from lib import data, encoding, stage05, transcripts
    from lib.engine.inference import NullSpec

    transcripts.build_transcripts(m, run / "transcripts")
    st = encoding.Settings(null=NullSpec(n_perm=50), perm_conditions=("raw",),
                           spaces=("word_rate",), tr=data.single_tr(m))
    job = encoding.volume_job(m, run / "transcripts", fake_index(run, stories),
                            run / "brain_score", nib.load(str(root / "mask.nii.gz")), st,
                            root / "planted.nii.gz")
    return stage05.run_stage(job, progress=False)


def test_generic_nifti_dataset_with_word_table_at_tr_1s_runs_stage_05(tmp_path, paths):
    """A BOLD NIfTI per run, timed words (onsets), TR 1.0 s from the BIDS sidecar."""
    root = tmp_path / "nii"
    m, n = _nifti_dataset(root, {"sub-a": ["pieman"], "sub-b": ["pieman"]})
    assert (m.tr == 1.0).all() and (m.responses == "nifti").all()
    run = tmp_path / "run"
    res = _stage05(m, root, run, ["pieman"])
    assert pd.read_csv(run / "transcripts" / "pieman.tsv", sep="\t").tr.max() < n
    sc = res["scores"]
    roi = sc[(sc.target == "roi-1") & (sc.condition == "word_rate")]
    assert len(roi) == 2 and (roi.brain_score > 0.3).all(), roi


def test_subjects_of_one_and_of_two_stories_are_scored_in_one_unit(tmp_path):
    """Stage 05 on a run where sub-a heard one story and sub-b two: sub-b's held-out stories are
    scored per block like sub-a's folds (its fold scheme says so), its noise ceiling is in the
    same unit, and the method table's scoring-unit row reports one unit."""
    from lib.report import scoring_units

    root = tmp_path / "nii"
    m, _ = _nifti_dataset(root, {"sub-a": ["pieman"], "sub-b": ["pieman", "retold"]})
    res = _stage05(m, root, tmp_path / "run", ["pieman", "retold"])
    scheme = res["scores"].groupby("subject").fold_scheme.first()
    assert scheme["sub-b"] == "leave-one-story-out, r per 5 blocks of each held-out story"
    assert scheme["sub-a"].startswith("5 contiguous blocks")
    assert "one scoring unit" in scoring_units(res["scores"])
    roi = res["scores"][(res["scores"].target == "roi-1") &
                        (res["scores"].condition == "word_rate")]
    assert (roi.brain_score > 0.3).all(), roi
    nc = pd.read_csv(tmp_path / "run" / "brain_score" / "noise_ceiling.csv")
    b = nc[nc.subject == "sub-b"]
    assert len(b) and b.scoring_unit.str.contains("block").all(), nc


# --------------------------------------------------------------------------- bad input
def _write_and_expect(tmp_path, build, match):
    """The adapter fails with a message naming the problem, and no manifest is written."""
    out = tmp_path / "out" / "data_manifest.csv"
    with pytest.raises(DataError, match=match):
        write_manifest(build(), out)
    assert not out.exists() and not any((tmp_path / "out").glob("*")) if \
        (tmp_path / "out").exists() else True


def test_bad_input_errors_name_the_file_and_write_nothing(tmp_path):
    root = make_generic_roi(tmp_path / "roi")
    runs = pd.read_csv(root / "runs.tsv", sep="\t")

    def variant(name, edit):
        d = tmp_path / name
        d.mkdir()
        for f in root.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        r = runs.copy()
        edit(d, r)
        r.to_csv(d / "runs.tsv", sep="\t", index=False)
        return d

    # word rows != response rows: words reach past the responses
    d = variant("short", lambda d, r: np.save(d / "S1_story0.npy", np.load(d / "S1_story0.npy")[:50]))
    _write_and_expect(tmp_path, lambda: datasets.generic_manifest(d), r"story0_words.tsv: words reach TR")
    # NaN rows
    def nan(d, r):
        Y = np.load(d / "S2_story1.npy")
        Y[7] = np.nan
        np.save(d / "S2_story1.npy", Y)
    d = variant("nan", nan)
    _write_and_expect(tmp_path, lambda: datasets.generic_manifest(d), r"S2_story1.npy: 1 rows hold NaN")
    # a story in both splits
    def both(d, r):
        r.loc[(r.subject == "S2") & (r.story == "story2"), "split"] = "train"
    d = variant("both", both)
    _write_and_expect(tmp_path, lambda: datasets.generic_manifest(d), r"runs.tsv: stories in more than one split: story2")
    # an unknown subject
    _write_and_expect(tmp_path, lambda: datasets.generic_manifest(root, subjects=["S1", "S9"]),
                      r"runs.tsv: unknown subjects S9")
    _write_and_expect(tmp_path, lambda: datasets.lebel_manifest(LEBEL, subjects=["UTS02"]),
                      r"stories.csv: unknown subjects UTS02")
    # a TR in neither the table, a sidecar, dataset.json nor the profile
    d = variant("notr", lambda d, r: r.drop(columns="tr", inplace=True))
    _write_and_expect(tmp_path, lambda: datasets.generic_manifest(d), r"S1_story0.npy: no TR")
    assert (datasets.generic_manifest(d, tr=2.5).tr == 2.5).all()   # the profile's TR serves
    # words per TR that do not match the responses' rows
    bad = tmp_path / "words.npz"
    np.savez(bad, words=np.array(["a b", "", "c"]))
    with pytest.raises(DataError, match=r"words.npz: 3 rows of words per TR but the responses have 4"):
        read_words(bad, 2.0, 4)


def test_lanczos_refuses_words_known_only_by_their_tr(tmp_path):
    from lib.spaces import run_features

    root = make_generic_roi(tmp_path / "roi")
    m = datasets.generic_manifest(root)
    from lib import transcripts

    transcripts.build_transcripts(m, tmp_path / "tr")
    row = m.iloc[0]
    path = tmp_path / "tr" / f"{row.story}.tsv"
    assert run_features("word_rate", row, path, "sum", cache_root=tmp_path / "c").shape == (160, 1)
    with pytest.raises(DataError, match=rf"{row.story}.tsv: lanczos aggregation needs word onsets"):
        run_features("word_rate", row, path, "lanczos", cache_root=tmp_path / "c")
