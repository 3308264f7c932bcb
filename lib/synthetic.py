"""The embedded ``narratives-mini`` dataset: REAL stimuli (pieman; tunnel on request), SYNTHETIC
BOLD.

A BIDS tree laid out like OpenNeuro ds002345 is written under ``data/narratives-mini`` in seconds,
deterministically from a seed. BOLD lives on nilearn's bundled MNI152 brain mask at a coarse grid.
Every voxel gets noise as smooth as real BOLD (:func:`realistic_noise`: AR(1) with phi 0.85-0.95 per
voxel + a shared global AR(0.95) fluctuation + slow drift); voxels in bilateral superior temporal
boxes also get a planted stimulus-driven signal: the HRF-convolved word rate and letter count of
the real words (nilearn's SPM HRF). The planted
truth (mask, generating weights, SNR, the r each voxel's signal has with its BOLD) is saved under
``derivatives/synthetic-truth`` so tests can check that it is recovered. Everything derived from
this tree says "synthetic BOLD".
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_path, key_of, write_json, write_text
from .data import TR_S, last_word_tr, story_timing
from .paths import Paths
from .transcripts import assign_trs, read_alignment

SYNTHETIC_LABEL = "synthetic BOLD"
STORY = "pieman"
N_TRS = 300                  # the real pieman scan length
SUBJECTS = [f"sub-{i:03d}" for i in range(1, 6)]
#: MNI boxes (mm) standing in for bilateral superior temporal cortex (no atlas download needed).
STG_BOXES = [((-70, -46), (-42, 4), (-14, 12)), ((46, 70), (-42, 4), (-14, 12))]
PIEMAN_EVENTS = [(0.0, 13.0, "music", "pieman_audio.wav"), (15.0, 422.0, "story", "pieman_audio.wav")]


def stimulus_regressors(words: pd.DataFrame, n_trs: int, tr: float = TR_S,
                        audio_start_s: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """HRF-convolved word rate and letter count per TR (z-scored), via nilearn's SPM HRF."""
    from nilearn.glm.first_level import compute_regressor

    frame_times = np.arange(n_trs) * tr
    onsets = words["onset"].to_numpy(float) + audio_start_s
    durations = np.full(len(onsets), 0.1)
    letters = words["word"].astype(str).str.count(r"[A-Za-z]").to_numpy(float)
    regs, names = [], ["word_rate", "letters"]
    for amp in (np.ones(len(onsets)), letters):
        r, _ = compute_regressor(np.vstack([onsets, durations, amp]), "spm", frame_times,
                                 oversampling=16)
        regs.append(r[:, 0])
    X = np.column_stack(regs)
    X = (X - X.mean(0)) / X.std(0)
    return X, names


def _ar1(rng, n, m, phi):
    """Unit-variance AR(1) noise, (n, m); ``phi`` a number or one value per column."""
    phi = np.broadcast_to(np.asarray(phi, np.float32), (m,))
    e = rng.standard_normal((n, m)).astype(np.float32)
    out = np.empty_like(e)
    out[0] = e[0]
    scale = np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + scale * e[t]
    return out


def _drift(rng, n, m, tr=TR_S):
    """Slow drift: random cosines with periods of 150-600 s (below the 128 s high-pass of real
    preprocessing, i.e. what is left of scanner drift), unit variance per column."""
    t = np.arange(n)[:, None] * tr
    out = np.zeros((n, m), np.float32)
    for _ in range(3):
        period = rng.uniform(150, 600, m)
        out += (rng.standard_normal(m) * np.cos(2 * np.pi * t / period
                                                 + rng.uniform(0, 2 * np.pi, m))).astype(np.float32)
    return out / np.maximum(out.std(0), 1e-6)


def smooth_null_features(rng, n: int, p: int = 64, phi: float = 0.9, delays=(1, 2, 3, 4, 5)
                         ) -> np.ndarray:
    """Features independent of any BOLD but as smooth as LM features summed per TR and delayed:
    AR(``phi``) units with FIR ``delays`` (neighbouring rows share most delayed copies)."""
    from .spaces import make_delays

    return make_delays(_ar1(rng, n, p, phi), delays)


def realistic_noise(rng, n: int, m: int, phi_range=(0.85, 0.95), tr: float = 1.5) -> np.ndarray:
    """Noise as smooth as real BOLD: per-voxel AR(1) with phi in ``phi_range`` + a shared global
    AR(0.95) fluctuation + slow drift, scaled to unit variance per voxel. The phis are per 1.5 s;
    at another ``tr`` the same time constants give phi ** (tr / 1.5)."""
    k = float(tr) / 1.5
    phi = rng.uniform(*phi_range, size=m) ** k
    noise = 0.8 * _ar1(rng, n, m, phi)
    noise += 0.45 * _ar1(rng, n, 1, 0.95 ** k)
    noise += 0.3 * _drift(rng, n, m, tr)
    return noise / noise.std(0)


def two_band_subjects(seed: int, n: int = 300, n_subjects: int = 6, n_targets: int = 10,
                      r: float = 0.35, kind: str = "redundant", unique_share: float = 0.0,
                      delays=(1, 2, 3, 4, 5), units: int = 6
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SYNTHETIC data for variance partitioning: two delayed feature bands A and B (``units``
    AR(0.9) units each; with 60 or more, each band has more columns than one story's TRs, as an
    LM's have) shared by every subject, and BOLD (n, subjects x targets) with noise as smooth
    as real BOLD. The signal (correlation ``r`` with BOLD) comes from A, plus a share
    ``unique_share`` of its variance from B. ``kind``: ``redundant`` -- B is a noisy mixture of
    A's units (it predicts BOLD through A, and adds nothing), ``copy`` -- B is A plus 10% noise
    (as a fine-tuned model's features are nearly the raw model's), or ``independent`` -- B is its
    own AR(0.9) process."""
    from .spaces import make_delays

    rng = np.random.default_rng(seed)
    a = _ar1(rng, n, units, 0.9)
    b = {"redundant": lambda: 0.8 * a @ rng.standard_normal((units, units)) / np.sqrt(units)
         + 0.6 * _ar1(rng, n, units, 0.9),
         "copy": lambda: a + 0.1 * _ar1(rng, n, units, 0.9),
         "independent": lambda: _ar1(rng, n, units, 0.9)}[kind]()
    A, B = make_delays(a, delays), make_delays(b, delays)

    def unit(x):
        s = x @ rng.standard_normal((x.shape[1], n_targets))
        return (s - s.mean(0)) / s.std(0)

    sig = np.sqrt(1 - unique_share) * unit(A) + np.sqrt(unique_share) * unit(B)
    Y = np.hstack([r * sig + np.sqrt(1 - r * r) * realistic_noise(rng, n, n_targets)
                   for _ in range(n_subjects)])
    return A.astype(np.float32), B.astype(np.float32), Y.astype(np.float32)


def planted_mask(mask_img) -> np.ndarray:
    """Boolean 3-D array: brain voxels inside the superior-temporal boxes."""
    from nilearn.image import coord_transform

    data = mask_img.get_fdata() > 0
    ijk = np.argwhere(data)
    x, y, z = coord_transform(ijk[:, 0], ijk[:, 1], ijk[:, 2], mask_img.affine)
    inside = np.zeros(len(ijk), bool)
    for (x0, x1), (y0, y1), (z0, z1) in STG_BOXES:
        inside |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1)
    out = np.zeros(data.shape, bool)
    out[tuple(ijk[inside].T)] = True
    return out


N_TRS_OF = {"pieman": 300, "tunnel": 1040}
EVENTS_OF = {"pieman": PIEMAN_EVENTS, "tunnel": [(3.0, 1534.0, "story", "tunnel_audio.wav")]}


def _story_truth(story: str, paths: Paths, n_trs: int):
    """Real words of ``story``, its timing (trim convention of lib.data) and its regressors."""
    src = paths.stimuli / story
    words = read_alignment(src / "align.csv")
    audio = story_timing(story, paths, n_trs=n_trs).audio_start_s
    timing = story_timing(story, paths, n_trs=n_trs,
                          last_word_tr=last_word_tr(src / "align.csv", audio))
    assign_trs(words, timing, n_trs, src / "align.csv")  # checks the words fit the scan
    S, names = stimulus_regressors(words, n_trs, TR_S, timing.audio_start_s)
    return src, timing, S, names


def make_mini(out: str | Path | None = None, seed: int = 0, resolution_mm: int = 6,
              subjects: list[str] | None = None, n_trs: int | None = None,
              r_range: tuple[float, float] = (0.3, 0.6), paths: Paths | None = None,
              force: bool = False, stories: list[str] | None = None, runs: int = 1,
              surface: str | None = None) -> Path:
    """Write the narratives-mini BIDS tree (skipped when one with the same key exists).

    ``surface`` (``fsaverage5`` or ``fsaverage6``) also writes every run on that cortical mesh,
    as Narratives' surface derivatives are laid out (:mod:`lib.synthetic_surface`), with its own
    planted patch in both superior temporal gyri; the volumes do not change.

    ``stories`` (default pieman) use their real stimuli and scan lengths (pieman 300 TRs, tunnel
    1040; ``n_trs`` overrides pieman's); ``runs`` > 1 gives every subject that many hearings of
    pieman (repeats share the stimulus-locked signal, not the noise), as sub-002..005 have in the
    real dataset. ``resolution_mm`` sets the MNI grid (6 mm default; 3 mm is the real
    derivative's voxel size).
    """
    # one generator stream: the order of its draws defines the dataset (and its key), so the
    # generation reads top to bottom in one function
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from tqdm.auto import tqdm

    paths = paths or Paths.from_env()
    out = Path(out) if out else paths.data / "narratives-mini"
    subjects = subjects or SUBJECTS
    stories = list(stories or [STORY])
    lengths = {st: (n_trs if n_trs and st == STORY else N_TRS_OF.get(st, n_trs)) for st in stories}
    params = dict(seed=seed, resolution_mm=resolution_mm, subjects=subjects, n_trs=lengths,
                  r_range=list(r_range), stories=stories, runs=runs, version=4)
    if surface:
        params["surface"] = surface
    key = key_of(params)
    stamp = out / "derivatives" / "synthetic-truth" / "truth.json"
    if not force and stamp.exists():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                return out
        except ValueError:
            pass
    if out.exists():
        shutil.rmtree(out)
    # build in a temporary sibling and rename: a crash never leaves half a dataset
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    rng = np.random.default_rng(seed)
    info = {st: _story_truth(st, paths, lengths[st]) for st in stories}
    names = info[stories[0]][3]

    mask_img = load_mni152_brain_mask(resolution=resolution_mm)
    brain = mask_img.get_fdata() > 0
    planted3d = planted_mask(mask_img)
    planted = planted3d[brain]                       # over brain voxels, in mask order
    n_vox, n_pl = int(brain.sum()), int(planted.sum())
    w_shared = rng.standard_normal((len(names), n_pl))
    w_shared[0] = np.abs(w_shared[0])   # auditory cortex responds positively to word rate
    target_r = rng.uniform(*r_range, size=n_pl)      # r of signal with BOLD, per planted voxel
    snr = target_r ** 2 / (1 - target_r ** 2)        # signal variance / noise variance

    write_json(tmp / "dataset_description.json", {
        "Name": f"narratives-mini ({SYNTHETIC_LABEL}; real stimuli from ds002345)",
        "BIDSVersion": "1.6.0", "DatasetType": "raw", "Synthetic": True,
        "GeneratedBy": [{"Name": "lib.synthetic.make_mini", "Parameters": params}],
        "SourceDatasets": [{"URL": "https://openneuro.org/datasets/ds002345"}],
    })
    pd.DataFrame({"participant_id": subjects, "task": ",".join(stories), "synthetic": True}
                 ).to_csv(tmp / "participants.tsv", sep="\t", index=False)
    for st, (src, _, _, _) in info.items():
        g = tmp / "stimuli" / "gentle" / st
        g.mkdir(parents=True)
        for f in ("align.csv", "transcript.txt"):
            if (src / f).exists():
                shutil.copy(src / f, g / f)
        write_json(tmp / f"task-{st}_bold.json", {"RepetitionTime": TR_S, "TaskName": st})

    scans = [(st, k) for st in stories for k in (range(1, runs + 1) if st == STORY else [0])]
    truth_r = {f"realised_r_{st}_run-{k}": np.zeros((len(subjects), n_pl), np.float32)
               for st, k in scans}
    subject_w = np.zeros((len(subjects),) + w_shared.shape)
    surf = _surface_plan(surface, seed, len(names), r_range) if surface else None
    for si, sub in enumerate(tqdm(subjects, desc="narratives-mini (synthetic BOLD)", leave=False)):
        w = w_shared + 0.3 * rng.standard_normal(w_shared.shape)   # subjects differ a little
        subject_w[si] = w
        func = tmp / sub / "func"
        func.mkdir(parents=True)
        for st, k in scans:
            _, timing, S, _ = info[st]
            n = lengths[st]
            sig = S @ w
            sig /= sig.std(0)
            bold = realistic_noise(rng, n, n_vox)
            noise_pl = bold[:, planted]
            bold[:, planted] = np.sqrt(snr) * sig + noise_pl
            sl = timing.kept_slice(n)
            truth_r[f"realised_r_{st}_run-{k}"][si] = [
                np.corrcoef(sig[sl, j], bold[sl, planted][:, j])[0, 1] for j in range(n_pl)]
            vol = np.zeros(brain.shape + (n,), np.float32)
            vol[brain] = (1000.0 + 20.0 * bold).T
            base = f"{sub}_task-{st}" + (f"_run-{k}" if k else "")
            img = nib.Nifti1Image(vol, mask_img.affine)
            img.header.set_zooms(img.header.get_zooms()[:3] + (TR_S,))
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, func / f"{base}_bold.nii.gz")
            if surf:
                _write_surface_run(surf, si, S, tmp / "derivatives" / "afni-nosmooth" / sub /
                                   "func" / f"{base}_space-{surface}")
            pd.DataFrame(EVENTS_OF.get(st, PIEMAN_EVENTS),
                         columns=["onset", "duration", "trial_type", "stim_file"]).to_csv(
                func / f"{base}_events.tsv", sep="\t", index=False)

    truth = tmp / "derivatives" / "synthetic-truth"
    truth.mkdir(parents=True)
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), mask_img.affine), truth / "brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(planted3d.astype(np.uint8), mask_img.affine),
             truth / "planted_mask.nii.gz")
    first = f"realised_r_{scans[0][0]}_run-{scans[0][1]}"
    if surf:
        np.savez(truth / "surface_truth.npz", planted_vertices=surf["planted"],
                 medial_vertices=surf["medial"], mesh=np.asarray(surface), snr=surf["snr"])
    np.savez(truth / "truth.npz", weights=w_shared, subject_weights=subject_w,
             target_r=target_r, snr=snr,
             realised_r=truth_r[first], regressors=info[stories[0]][2], planted_in_mask=planted,
             **truth_r, **{f"regressors_{st}": v[2] for st, v in info.items()})
    write_json(truth / "truth.json", {
        "key": key, "label": SYNTHETIC_LABEL, "params": params, "regressors": names,
        "n_voxels": n_vox, "n_planted": n_pl, "subjects": subjects,
        "kept_trs": {st: [v[1].trim_start, lengths[st] - v[1].trim_end] for st, v in info.items()},
        "mean_target_r": float(target_r.mean()),
        "mean_realised_r": float(truth_r[first].mean()),
        "notes": "BOLD = sqrt(snr) * (HRF-convolved word rate/letters @ weights) + noise in "
                 "planted voxels, noise elsewhere; noise = per-voxel AR(1) (phi 0.85-0.95) + "
                 "global AR(0.95) + slow drift; realised_r = corr(signal, BOLD) on kept TRs.",
    })
    write_text(tmp / "README", f"narratives-mini: {SYNTHETIC_LABEL}. Stimuli are the real files "
                               f"of OpenNeuro ds002345; BOLD is generated by "
                               f"lib.synthetic.make_mini {params}.\n")
    tmp.rename(out)
    return out


def _surface_plan(mesh: str, seed: int, n_regressors: int, r_range) -> dict:
    """The surface's planted patch and weights, from a generator of its own (the volumes are the
    same with or without a surface)."""
    from .synthetic_surface import surface_layout

    rng = np.random.default_rng([seed, 7])
    planted, medial = surface_layout(mesh)
    w = rng.standard_normal((n_regressors, int(planted.sum())))
    w[0] = np.abs(w[0])
    r = rng.uniform(*r_range, size=int(planted.sum()))
    return dict(rng=rng, planted=planted, medial=medial, w=w, snr=r ** 2 / (1 - r ** 2),
                subject_w={})


def _write_surface_run(surf: dict, si: int, S: np.ndarray, base: Path) -> None:
    from .synthetic_surface import save_gifti_run, surface_run

    rng = surf["rng"]
    if si not in surf["subject_w"]:
        surf["subject_w"][si] = surf["w"] + 0.3 * rng.standard_normal(surf["w"].shape)
    sig = S @ surf["subject_w"][si]
    base.parent.mkdir(parents=True, exist_ok=True)
    save_gifti_run(surface_run(rng, sig / sig.std(0), surf["snr"], surf["planted"],
                               surf["medial"], realistic_noise), base)


def load_truth(root: str | Path) -> dict:
    """Planted truth of a narratives-mini tree (masks as boolean arrays, arrays from truth.npz)."""
    import nibabel as nib

    t = Path(root) / "derivatives" / "synthetic-truth"
    meta = json.loads((t / "truth.json").read_text())
    with np.load(t / "truth.npz") as z:
        meta.update({k: z[k] for k in z.files})
    if (t / "surface_truth.npz").exists():
        with np.load(t / "surface_truth.npz") as z:
            meta.update({k: z[k] for k in z.files if k != "snr"})
    meta["brain_mask_img"] = nib.load(str(t / "brain_mask.nii.gz"))
    meta["planted_mask_img"] = nib.load(str(t / "planted_mask.nii.gz"))
    return meta


def truth_for_run(run_dir: str | Path) -> dict:
    """Planted truth of the synthetic dataset a pipeline run analysed (from its manifest)."""
    from .data import read_manifest

    m = read_manifest(Path(run_dir) / "data" / "data_manifest.csv")
    first = Path(m.bold_path.iloc[0])
    root = next((p for p in first.parents if (p / "derivatives" / "synthetic-truth").exists()),
                None)
    if root is None:
        raise FileNotFoundError(f"{first}: not part of a synthetic dataset (no synthetic-truth)")
    return load_truth(root)
