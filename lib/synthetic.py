"""The embedded ``narratives-mini`` dataset: REAL pieman stimuli, SYNTHETIC BOLD.

A BIDS tree laid out like OpenNeuro ds002345 is written under ``data/narratives-mini`` in seconds,
deterministically from a seed. BOLD lives on nilearn's bundled MNI152 brain mask at a coarse grid.
Every voxel gets noise with realistic temporal structure (AR(1) + a shared global fluctuation + slow
drift); voxels in bilateral superior temporal boxes also get a planted stimulus-driven signal: the
HRF-convolved word rate and letter count of the real pieman words (nilearn's SPM HRF). The planted
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
from .data import TR_S, story_timing
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
    e = rng.standard_normal((n, m)).astype(np.float32)
    out = np.empty_like(e)
    out[0] = e[0] / np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + e[t]
    return out * np.sqrt(1 - phi ** 2)  # unit variance


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


def make_mini(out: str | Path | None = None, seed: int = 0, resolution_mm: int = 6,
              subjects: list[str] | None = None, n_trs: int = N_TRS,
              r_range: tuple[float, float] = (0.3, 0.6), paths: Paths | None = None,
              force: bool = False) -> Path:
    """Write the narratives-mini BIDS tree (skipped when one with the same key exists)."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask

    paths = paths or Paths.from_env()
    out = Path(out) if out else paths.data / "narratives-mini"
    subjects = subjects or SUBJECTS
    params = dict(seed=seed, resolution_mm=resolution_mm, subjects=subjects, n_trs=n_trs,
                  r_range=list(r_range), version=3)
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

    src = paths.stimuli / STORY
    words = read_alignment(src / "align.csv")
    timing = story_timing(STORY, paths, n_trs=n_trs)
    assign_trs(words, timing, n_trs, src / "align.csv")  # checks the words fit the scan
    S, names = stimulus_regressors(words, n_trs, TR_S, timing.audio_start_s)

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
        "Name": f"narratives-mini ({SYNTHETIC_LABEL}; real pieman stimuli from ds002345)",
        "BIDSVersion": "1.6.0", "DatasetType": "raw", "Synthetic": True,
        "GeneratedBy": [{"Name": "lib.synthetic.make_mini", "Parameters": params}],
        "SourceDatasets": [{"URL": "https://openneuro.org/datasets/ds002345"}],
    })
    pd.DataFrame({"participant_id": subjects, "task": STORY, "synthetic": True}).to_csv(
        tmp / "participants.tsv", sep="\t", index=False)
    g = tmp / "stimuli" / "gentle" / STORY
    g.mkdir(parents=True)
    for f in ("align.csv", "transcript.txt"):
        shutil.copy(src / f, g / f)
    write_json(tmp / f"task-{STORY}_bold.json", {"RepetitionTime": TR_S, "TaskName": STORY})

    truth_r = np.zeros((len(subjects), n_pl), np.float32)
    from tqdm.auto import tqdm

    for si, sub in enumerate(tqdm(subjects, desc="narratives-mini (synthetic BOLD)", leave=False)):
        w = w_shared + 0.3 * rng.standard_normal(w_shared.shape)   # subjects differ a little
        sig = S @ w
        sig /= sig.std(0)
        noise = 0.8 * _ar1(rng, n_trs, n_vox, phi=0.5)
        noise += 0.5 * _ar1(rng, n_trs, 1, phi=0.9)                # shared global fluctuation
        noise += 0.3 * np.outer(np.linspace(-1, 1, n_trs), rng.standard_normal(n_vox))  # drift
        noise /= noise.std(0)
        bold = noise
        bold[:, planted] = np.sqrt(snr) * sig + noise[:, planted]
        sl = timing.kept_slice(n_trs)
        truth_r[si] = [np.corrcoef(sig[sl, k], bold[sl, planted][:, k])[0, 1] for k in range(n_pl)]
        vol = np.zeros(brain.shape + (n_trs,), np.float32)
        vol[brain] = (1000.0 + 20.0 * bold).T
        func = tmp / sub / "func"
        func.mkdir(parents=True)
        base = f"{sub}_task-{STORY}_run-1"
        img = nib.Nifti1Image(vol, mask_img.affine)
        img.header.set_zooms(img.header.get_zooms()[:3] + (TR_S,))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, func / f"{base}_bold.nii.gz")
        pd.DataFrame(PIEMAN_EVENTS, columns=["onset", "duration", "trial_type", "stim_file"]).to_csv(
            func / f"{base}_events.tsv", sep="\t", index=False)

    truth = tmp / "derivatives" / "synthetic-truth"
    truth.mkdir(parents=True)
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), mask_img.affine), truth / "brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(planted3d.astype(np.uint8), mask_img.affine),
             truth / "planted_mask.nii.gz")
    np.savez(truth / "truth.npz", weights=w_shared, target_r=target_r, snr=snr,
             realised_r=truth_r, regressors=S, planted_in_mask=planted)
    write_json(truth / "truth.json", {
        "key": key, "label": SYNTHETIC_LABEL, "params": params, "regressors": names,
        "n_voxels": n_vox, "n_planted": n_pl, "subjects": subjects,
        "mean_target_r": float(target_r.mean()), "mean_realised_r": float(truth_r.mean()),
        "notes": "BOLD = sqrt(snr) * (HRF-convolved word rate/letters @ weights) + noise in "
                 "planted voxels, noise elsewhere; realised_r = corr(signal, BOLD) on kept TRs.",
    })
    write_text(tmp / "README", f"narratives-mini: {SYNTHETIC_LABEL}. Stimuli are the real pieman "
                               f"files of OpenNeuro ds002345; BOLD is generated by "
                               f"lib.synthetic.make_mini {params}.\n")
    tmp.rename(out)
    return out


def load_truth(root: str | Path) -> dict:
    """Planted truth of a narratives-mini tree (masks as boolean arrays, arrays from truth.npz)."""
    import nibabel as nib

    t = Path(root) / "derivatives" / "synthetic-truth"
    meta = json.loads((t / "truth.json").read_text())
    with np.load(t / "truth.npz") as z:
        meta.update({k: z[k] for k in z.files})
    meta["brain_mask_img"] = nib.load(str(t / "brain_mask.nii.gz"))
    meta["planted_mask_img"] = nib.load(str(t / "planted_mask.nii.gz"))
    return meta
