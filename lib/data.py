"""Stage 01: the dataset subset and its manifest.

Reads a BIDS root laid out like OpenNeuro ds002345 (Narratives) -- the embedded synthetic
``narratives-mini`` tree or a downloaded real subset -- and writes ``data_manifest.csv``: one row per
(subject, story, run) with the BOLD file, its TR count and TR, the Gentle alignment and transcript,
the story's timing in scan time (audio start, trims) and whether the dataset authors exclude it.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import write_csv
from .errors import DataError  # noqa: F401  (re-exported: lib.data.DataError)
from .paths import Paths

TR_S = 1.5  # Narratives' TR: only the fallback when neither a sidecar nor a header gives one

#: BOLD file patterns (relative to the BIDS root) for each source the manifest can use.
BOLD_SOURCES = {
    "raw": "sub-*/func/sub-*_task-*_bold.nii.gz",
    "afni-nosmooth": "derivatives/afni-nosmooth/sub-*/func/"
                     "sub-*_task-*_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz",
    "afni-smooth": "derivatives/afni-smooth/sub-*/func/"
                   "sub-*_task-*_space-MNI152NLin2009cAsym_res-native_desc-sm6_bold.nii.gz",
    "fmriprep": "derivatives/fmriprep/sub-*/func/"
                "sub-*_task-*_space-MNI152NLin2009cAsym_res-native_desc-preproc_bold.nii.gz",
    # the cortical surface (lib/surface.py): the left hemisphere's file names the run
    "fsaverage6": "derivatives/afni-nosmooth/sub-*/func/"
                  "sub-*_task-*_space-fsaverage6_hemi-L_desc-clean.func.gii",
    "fsaverage5": "derivatives/afni-nosmooth/sub-*/func/"
                  "sub-*_task-*_space-fsaverage5_hemi-L_desc-clean.func.gii",
}
_ENTITIES = re.compile(r"(sub-[A-Za-z0-9]+)_task-([A-Za-z0-9]+)(?:_run-([0-9]+))?")

MANIFEST_COLUMNS = [
    "subject", "story", "run", "bold_path", "n_trs", "tr", "alignment_path", "transcript_path",
    "audio_start_s", "trim_start", "trim_end", "story_onset_tr", "story_duration_tr",
    "excluded", "exclusion_reason", "synthetic_bold", "audio_path",
    "responses", "words_path", "split",
]
#: defaults of the columns added after the first manifests (read_manifest fills them in)
MANIFEST_DEFAULTS = {"audio_path": "", "responses": "nifti", "words_path": "", "split": ""}




# --------------------------------------------------------------------------- metadata
def _load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


@dataclass(frozen=True)
class StoryTiming:
    """Where a story sits in scan time. TR indices are 0-based from the first retained volume."""

    story: str
    tr: float
    audio_start_s: float      # scan time at which the story's audio file (and Gentle's t=0) starts
    onset_tr: int             # story onset (event_meta.json)
    duration_tr: int          # story duration (event_meta.json)
    trim_start: int           # TRs dropped at the start of the scan before modelling
    trim_end: int             # TRs dropped at the end of the scan

    def kept_slice(self, n_trs: int) -> slice:
        return slice(self.trim_start, n_trs - self.trim_end)


def audio_start_from_events(events_tsv: Path, story: str) -> float | None:
    """Scan time where ``<story>_audio.wav`` starts: the earliest event that plays that file.

    (pieman: music at 0 s from the same file, so 0 s; tunnel: story at 3 s.)
    """
    try:
        ev = pd.read_csv(events_tsv, sep="\t")
    except (OSError, ValueError):
        return None
    if "stim_file" not in ev or "onset" not in ev:
        return None
    rows = ev[ev["stim_file"].astype(str).str.contains(f"{story}_audio", regex=False)]
    return float(rows["onset"].min()) if len(rows) else None


#: Trim convention (profile keys ``trim_after_onset`` and ``tail_trs``): the Narratives ISC
#: analyses drop the first 6 TRs after story onset (the onset transient); the scan is kept up to
#: ``tail_trs`` TRs after the TR of the last word, so the haemodynamic response to the last words
#: (peak ~5 s, back near baseline by ~12 s = 8 TRs; the FIR delays reach 7.5 s) stays in.
TRIM_AFTER_ONSET = 6
TAIL_TRS = 8


def story_timing(story: str, paths: Paths | None = None, events_tsv: Path | None = None,
                 n_trs: int | None = None, trim_after_onset: int = TRIM_AFTER_ONSET,
                 tail_trs: int = TAIL_TRS, last_word_tr: int | None = None,
                 tr: float = TR_S) -> StoryTiming:
    """Timing of ``story`` from the dataset metadata (event_meta, events.tsv, story_facts), with
    the trims of the convention above, at the run's ``tr``. Without ``last_word_tr`` the story's
    end (event_meta onset + duration) stands in for the last word."""
    paths = paths or Paths.from_env()
    meta = _load_json(paths.metadata / "event_meta.json")
    if story not in meta or story not in meta[story]:
        raise DataError(f"{paths.metadata / 'event_meta.json'}: no timing for story {story!r}")
    onset, duration = int(meta[story][story]["onset"]), int(meta[story][story]["duration"])
    audio = audio_start_from_events(events_tsv, story) if events_tsv else None
    if audio is None:
        facts = _load_json(paths.narratives / "story_facts.json").get(story, {})
        audio = facts.get("audio_file_starts_at_scan_time_s")
        if audio is None:  # fall back to the story event's onset in the dataset's events
            ev = facts.get("events_tsv") or []
            story_ev = [float(e[0]) for e in ev if e[2] == "story"]
            if not story_ev:
                raise DataError(f"no audio start time known for story {story!r} "
                                f"(no events.tsv and no entry in story_facts.json)")
            audio = story_ev[0]
    if trim_after_onset < 0 or tail_trs < 0:
        raise ValueError("trim_after_onset and tail_trs must be >= 0")
    last = onset + duration - 1 if last_word_tr is None else int(last_word_tr)
    t0 = onset + int(trim_after_onset)
    end = last + 1 + int(tail_trs)
    t1 = max(0, n_trs - end) if n_trs is not None else 0
    return StoryTiming(story, float(tr), float(audio), onset, duration, t0, t1)


def last_word_tr(alignment: Path, audio_start_s: float, tr: float = TR_S) -> int:
    """TR of the last word's onset (Gentle times + where the audio starts in the scan)."""
    from .alignment import read_alignment

    words = read_alignment(alignment)
    return int(np.floor((float(words["onset"].max()) + audio_start_s) / tr + 1e-9))


def scan_exclusions(paths: Paths | None = None) -> dict[tuple[str, str, int | None], str]:
    """(subject, story, run or None) -> reason, from the dataset's ``scan_exclude.json``."""
    paths = paths or Paths.from_env()
    src = paths.metadata / "scan_exclude.json"
    out = {}
    for story, subs in _load_json(src).items():
        for sub, scans in subs.items():
            for scan in scans:
                m = _ENTITIES.search(scan)
                run = int(m.group(3)) if m and m.group(3) else None
                out[(sub, story, run)] = f"dataset authors' scan_exclude.json lists {scan}"
    return out


def subjects_for(stories: list[str], paths: Paths | None = None) -> list[str]:
    """Every subject who heard any of ``stories`` (the dataset's participants metadata);
    exclusions are applied later, by the manifest, so they stay visible."""
    paths = paths or Paths.from_env()
    meta = _load_json(paths.metadata / "participants_meta.json")
    want = set(stories)
    return sorted(s for s, v in meta.items() if want & set(v.get("task", [])))


# --------------------------------------------------------------------------- BOLD files
def check_gzip(path: Path) -> None:
    """Stream-decompress a .gz file to its end: catches truncation and CRC errors cheaply."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None


def bold_header(path: Path, check_integrity: bool = True):
    """(n_trs, spatial shape, TR from header) of a 4D NIfTI, with clear errors."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: BOLD file not found")
    if check_integrity and path.suffix == ".gz":
        check_gzip(path)
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for bad headers
        raise DataError(f"{path}: not a readable NIfTI image ({e})") from None
    if len(img.shape) != 4:
        raise DataError(f"{path}: expected a 4D BOLD image, got shape {img.shape}")
    return int(img.shape[3]), tuple(img.shape[:3]), float(img.header.get_zooms()[3])


def sidecar_tr(bold: Path, root: Path, story: str, header_tr: float) -> float:
    """RepetitionTime from the BIDS sidecar (next to the file, or inherited from the root)."""
    candidates = [bold.with_name(bold.name.replace(".nii.gz", ".json")),
                  root / f"task-{story}_bold.json"]
    for c in candidates:
        if c.exists():
            meta = _load_json(c)
            if "RepetitionTime" not in meta:
                raise DataError(f"{c}: sidecar has no RepetitionTime")
            return float(meta["RepetitionTime"])
    if header_tr > 0:
        return header_tr
    raise DataError(f"{bold}: no sidecar with RepetitionTime and no TR in the NIfTI header")


def load_bold(path: str | Path, mask=None) -> np.ndarray:
    """BOLD as float32 (n_trs, n_voxels) inside ``mask`` (a NIfTI image or boolean array)."""
    import nibabel as nib

    from .surface import is_surface_path, load_surface_bold

    path = Path(path)
    if is_surface_path(path):                # a cortical-surface run: mask = the vertex mask
        return load_surface_bold(path, mask)
    if not path.exists():
        raise DataError(f"{path}: BOLD file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
        raise DataError(f"{path}: could not read BOLD data ({e})") from None
    if mask is None:
        m = np.ones(data.shape[:3], bool)
    else:
        m = np.asarray(mask.get_fdata() if hasattr(mask, "get_fdata") else mask) > 0
        if m.shape != data.shape[:3]:
            raise DataError(f"{path}: BOLD grid {data.shape[:3]} does not match mask grid {m.shape}")
    if not m.any():
        raise DataError(f"{path}: the brain mask is empty")
    return np.ascontiguousarray(data[m].T)


# --------------------------------------------------------------------------- manifest
def find_bold(root: Path, source: str = "raw") -> list[Path]:
    if source not in BOLD_SOURCES:
        raise DataError(f"unknown bold_source {source!r}; choose from {sorted(BOLD_SOURCES)}")
    return sorted(root.glob(BOLD_SOURCES[source]))


def audio_file(root: Path, story: str) -> Path | None:
    """The story's audio as OpenNeuro lays it out (``stimuli/<story>_audio.wav``), if present."""
    p = Path(root) / "stimuli" / f"{story}_audio.wav"
    return p if p.exists() else None


def alignment_paths(root: Path, story: str) -> tuple[Path | None, Path | None]:
    g = root / "stimuli" / "gentle" / story
    align = next((p for p in (g / "align.csv", g / "align.json") if p.exists()), None)
    transcript = g / "transcript.txt"
    return align, transcript if transcript.exists() else None


def _run_row(bold: Path, m, root: Path, bold_source: str, paths: Paths, check_integrity: bool,
             last_words: dict, trim_after_onset: int, tail_trs: int) -> dict:
    """One run's manifest fields (all but the exclusion and synthetic flags): its TRs and TR,
    words, and the story's timing in scan time."""
    sub, story, run = m.group(1), m.group(2), int(m.group(3)) if m.group(3) else 1
    from .surface import is_surface_path, n_trs as surface_trs

    surface = is_surface_path(bold)
    if surface:
        n_trs, header_tr = surface_trs(bold), 0.0
    else:
        n_trs, _, header_tr = bold_header(bold, check_integrity=check_integrity)
    raw_func = root / sub / "func"
    run_ent = f"_run-{m.group(3)}" if m.group(3) else ""
    events = raw_func / f"{sub}_task-{story}{run_ent}_events.tsv"
    tr = sidecar_tr(raw_func / f"{sub}_task-{story}{run_ent}_bold.nii.gz"
                    if bold_source != "raw" else bold, root, story, header_tr)
    ev = events if events.exists() else None
    align, transcript = alignment_paths(root, story)
    audio = story_timing(story, paths, ev, n_trs, tr=tr).audio_start_s
    last = last_words.setdefault((story, audio, tr), last_word_tr(align, audio, tr)) \
        if align else None
    timing = story_timing(story, paths, ev, n_trs, trim_after_onset, tail_trs, last, tr)
    if timing.onset_tr + timing.duration_tr > n_trs:
        raise DataError(
            f"{bold}: {n_trs} TRs cannot hold story {story!r}, which runs to TR "
            f"{timing.onset_tr + timing.duration_tr} (onset {timing.onset_tr} + duration "
            f"{timing.duration_tr} TRs, event_meta.json)")
    return dict(
        subject=sub, story=story, run=run, bold_path=str(bold), n_trs=n_trs, tr=tr,
        alignment_path=str(align) if align else "", transcript_path=str(transcript or ""),
        audio_start_s=timing.audio_start_s, trim_start=timing.trim_start,
        trim_end=timing.trim_end, story_onset_tr=timing.onset_tr,
        story_duration_tr=timing.duration_tr, audio_path=str(audio_file(root, story) or ""),
        responses="gifti" if surface else "nifti", words_path="", split="")


def build_manifest(root: str | Path, subjects: list[str] | None = None,
                   stories: list[str] | None = None, bold_source: str = "raw",
                   include_excluded: bool = False, paths: Paths | None = None,
                   check_integrity: bool = True, trim_after_onset: int = TRIM_AFTER_ONSET,
                   tail_trs: int = TAIL_TRS) -> pd.DataFrame:
    """Scan a BIDS root and return the manifest (one row per BOLD run).

    Excluded scans stay in the table with ``excluded=True`` and the reason; ``include_excluded``
    sets them back to ``excluded=False`` (the reason is kept, prefixed ``included anyway:``).
    """
    paths = paths or Paths.from_env()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: BIDS root not found")
    desc = root / "dataset_description.json"
    synthetic = bool(_load_json(desc).get("Synthetic", False)) if desc.exists() else False
    excl = scan_exclusions(paths)
    rows, last_words = [], {}
    for bold in find_bold(root, bold_source):
        m = _ENTITIES.search(bold.name)
        if not m:
            continue
        sub, story = m.group(1), m.group(2)
        if subjects and sub not in subjects or stories and story not in stories:
            continue
        row = _run_row(bold, m, root, bold_source, paths, check_integrity, last_words,
                       trim_after_onset, tail_trs)
        reason = excl.get((sub, story, row["run"])) or excl.get((sub, story, None)) or ""
        if reason and include_excluded:
            reason = "included anyway: " + reason
        rows.append(dict(row, excluded=bool(reason) and not include_excluded,
                         exclusion_reason=reason, synthetic_bold=synthetic))
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if subjects:
        missing = sorted(set(subjects) - set(df["subject"]))
        if missing:
            raise DataError(f"{root}: no {bold_source} BOLD runs for {', '.join(missing)}"
                            + (f" on {', '.join(stories)}" if stories else ""))
    for story in stories or []:
        align, _ = alignment_paths(root, story)
        if story not in set(df["story"]):
            where = f" (alignment {align} exists)" if align else ""
            raise DataError(f"{root}: story {story!r} has no {bold_source} BOLD run{where}")
        if align is None:
            raise DataError(f"{root / 'stimuli' / 'gentle' / story}: no align.csv or align.json "
                            f"for story {story!r}")
    return df.sort_values(["subject", "story", "run"]).reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(path, df)


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found (run stage 01 first)") from None
    for col, default in MANIFEST_DEFAULTS.items():   # manifests written before these columns
        if col not in df:
            df[col] = default
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: manifest lacks columns {sorted(missing)}")
    for c in ("excluded", "synthetic_bold"):
        df[c] = df[c].astype(str).str.lower().isin(["true", "1"])
    return df


def single_tr(manifest: pd.DataFrame) -> float:
    """The TR of the runs in use (one per analysis: time constants are converted at it)."""
    trs = sorted(set(manifest.loc[~manifest["excluded"], "tr"].astype(float).round(6)))
    if len(trs) != 1:
        raise DataError(f"runs with different TRs ({', '.join(f'{t:g} s' for t in trs)}) "
                        f"cannot be modelled together; select one TR's runs")
    return trs[0]


def timing_of_row(row) -> StoryTiming:
    return StoryTiming(row["story"], float(row["tr"]), float(row["audio_start_s"]),
                       int(row["story_onset_tr"]), int(row["story_duration_tr"]),
                       int(row["trim_start"]), int(row["trim_end"]))


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Runs per subject and story, with how many are excluded."""
    return (df.groupby(["subject", "story"])
              .agg(runs=("run", "count"), n_trs=("n_trs", "first"),
                   excluded=("excluded", "sum"))
              .reset_index())


def as_dict(t: StoryTiming) -> dict:
    return asdict(t)


#: the kinds of target stage 05 fits, by the manifest's ``responses`` column
KINDS = {"nifti": "volume", "gifti": "surface", "matrix": "matrix"}


def target_kind(manifest: pd.DataFrame, wanted: str = "auto", source: str = "manifest") -> str:
    """``volume``, ``surface`` or ``matrix``: what the manifest's runs hold (its ``responses``
    column). ``wanted`` other than ``auto`` must agree with it."""
    runs = manifest[~manifest["excluded"]] if "excluded" in manifest else manifest
    found = {KINDS.get(r, r) for r in runs.get("responses", pd.Series(["nifti"] * len(runs)))}
    if len(found) != 1 or not found <= set(KINDS.values()):
        raise DataError(f"{source}: runs must hold one kind of responses of "
                        f"{sorted(KINDS)}; found {sorted(found)}")
    kind = found.pop()
    if wanted not in ("auto", kind):
        raise DataError(f"{source}: the runs hold {kind} responses, the parameters say "
                        f"targets={wanted!r}")
    return kind
