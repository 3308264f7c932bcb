"""Fetch a subset of OpenNeuro ds002345 (Narratives) from OpenNeuro's public S3 bucket.

boto3 with unsigned requests, rather than openneuro-py: we need a subset chosen by subject, story
and derivative (openneuro-py filters by include patterns but downloads through its GraphQL API and
cannot point at an S3-compatible mirror or a local test server), byte-range resume of a partial
file, and ETag (MD5) checks -- all direct S3 operations.

Keys mirror the dataset root under ``ds002345/`` in the bucket ``openneuro.org``::

    ds002345/dataset_description.json, participants.tsv, task-<story>_bold.json
    ds002345/sub-XXX/func/sub-XXX_task-<story>[_run-N]_{bold.nii.gz,events.tsv,bold.json}
    ds002345/derivatives/afni-nosmooth/sub-XXX/func/
        sub-XXX_task-<story>[_run-N]_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz
        sub-XXX_task-<story>[_run-N]_space-fsaverage6_hemi-{L,R}_desc-clean.func.gii
    ds002345/stimuli/gentle/<story>/{align.json,align.csv,transcript.txt}

Every file is written to ``<name>.part`` and renamed once complete and verified; a rerun skips
files whose size (and single-part ETag = MD5) match and resumes ``.part`` files with a byte range.
Files download in parallel (``workers`` threads: the work is network-bound, and boto3 clients are
thread-safe); a failed file stops the download with its key named, the finished ones stay.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

BUCKET = "openneuro.org"
PREFIX = "ds002345"
DERIVATIVE_SUFFIX = {
    "raw": None,
    "afni-nosmooth": ("_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz",),
    "afni-smooth": ("_space-MNI152NLin2009cAsym_res-native_desc-sm6_bold.nii.gz",),
    "fmriprep": ("_space-MNI152NLin2009cAsym_res-native_desc-preproc_bold.nii.gz",),
    # the cortical surface: both hemispheres of every run (lib/surface.py)
    "fsaverage6": ("_space-fsaverage6_hemi-L_desc-clean.func.gii",
                   "_space-fsaverage6_hemi-R_desc-clean.func.gii"),
}
#: the derivatives folder of a bold source, where it is not the source's own name
DERIVATIVE_DIR = {"fsaverage6": "afni-nosmooth"}


class DownloadError(RuntimeError):
    pass


class IntegrityError(DownloadError):
    pass


@dataclass
class RemoteFile:
    key: str
    size: int
    etag: str

    @property
    def md5(self) -> str | None:
        """The MD5 when the ETag is one (single-part uploads); multipart ETags contain '-'."""
        e = self.etag.strip('"')
        return e if re.fullmatch(r"[0-9a-f]{32}", e) else None


def client(endpoint_url: str | None = None, region: str = "us-east-1", retries: int = 5):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    cfg = Config(signature_version=UNSIGNED, retries={"max_attempts": retries, "mode": "standard"},
                 connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)


def _explain(e: Exception, what: str, endpoint: str | None) -> DownloadError:
    from botocore.exceptions import ClientError, EndpointConnectionError

    where = endpoint or "OpenNeuro's S3 (s3.amazonaws.com)"
    if isinstance(e, EndpointConnectionError):
        return DownloadError(f"cannot reach {where} for {what}: no network? ({e})")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return DownloadError(f"{what}: not found on {where}")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return DownloadError(f"{what}: access denied by {where} (anonymous reads must be "
                                 f"allowed, as on OpenNeuro)")
        if code == "NoSuchBucket":
            return DownloadError(f"{what}: bucket does not exist on {where}")
        return DownloadError(f"{what}: {code or e}")
    return DownloadError(f"{what}: {e}")


def _list(s3, bucket: str, prefix: str, endpoint: str | None) -> list[RemoteFile]:
    out = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out.append(RemoteFile(o["Key"], int(o["Size"]), o.get("ETag", "")))
    except Exception as e:
        raise _explain(e, f"s3://{bucket}/{prefix}", endpoint) from None
    return out


def plan_subset(subjects: list[str], stories: list[str], derivative: str = "afni-nosmooth",
                endpoint_url: str | None = None, bucket: str = BUCKET, prefix: str = PREFIX,
                s3=None, audio: bool = False) -> list[RemoteFile]:
    """The files a subset needs (listing the bucket; nothing is downloaded). ``audio`` adds the
    stories' ``stimuli/<story>_audio.wav``."""
    if derivative not in DERIVATIVE_SUFFIX:
        raise DownloadError(f"unknown derivative {derivative!r}; choose from "
                            f"{sorted(DERIVATIVE_SUFFIX)}")
    s3 = s3 or client(endpoint_url)
    top = {f.key: f for f in _list(s3, bucket, f"{prefix}/", endpoint_url)
           if "/" not in f.key[len(prefix) + 1:]}
    if not top:
        raise DownloadError(f"s3://{bucket}/{prefix}/: no files there (wrong bucket or prefix?)")
    want = [f for k, f in top.items()
            if k.endswith(("dataset_description.json", "participants.tsv", "README"))
            or any(k.endswith(f"task-{s}_bold.json") for s in stories)]
    task = re.compile(r"_task-(" + "|".join(map(re.escape, stories)) + r")[_.]")
    for sub in subjects:
        raw = [f for f in _list(s3, bucket, f"{prefix}/{sub}/func/", endpoint_url)
               if task.search(f.key)]
        keep = [f for f in raw if f.key.endswith(("_events.tsv", "_bold.json"))
                or (derivative == "raw" and f.key.endswith("_bold.nii.gz"))]
        if derivative != "raw":
            folder = DERIVATIVE_DIR.get(derivative, derivative)
            d = _list(s3, bucket, f"{prefix}/derivatives/{folder}/{sub}/func/", endpoint_url)
            suffixes = DERIVATIVE_SUFFIX[derivative]
            bold = [f for f in d if task.search(f.key) and f.key.endswith(suffixes)]
            _check_pairs(bold, suffixes, f"s3://{bucket}/{prefix}", sub)
            keep += bold + [f for f in d if task.search(f.key) and "brain_mask" in f.key
                            and derivative not in DERIVATIVE_DIR]
        if not any(f.key.endswith((".nii.gz", ".func.gii")) for f in keep):
            raise DownloadError(f"s3://{bucket}/{prefix}: no {derivative} BOLD for {sub} on "
                                f"{', '.join(stories)}")
        want += keep
    for story in stories:
        st = _list(s3, bucket, f"{prefix}/stimuli/gentle/{story}/", endpoint_url)
        if not st:
            raise DownloadError(f"s3://{bucket}/{prefix}/stimuli/gentle/{story}/: no alignment "
                                f"files")
        want += st
        if audio:
            wav = [f for f in _list(s3, bucket, f"{prefix}/stimuli/{story}_audio", endpoint_url)
                   if f.key.endswith(".wav")]
            if not wav:
                raise DownloadError(f"s3://{bucket}/{prefix}/stimuli/{story}_audio.wav: not found")
            want += wav
    return sorted({f.key: f for f in want}.values(), key=lambda f: f.key)


def _check_pairs(bold: list[RemoteFile], suffixes: tuple, where: str, sub: str) -> None:
    """Every run of a multi-file source (a surface: left and right hemisphere) is complete."""
    if len(suffixes) < 2:
        return
    runs: dict[str, set] = {}
    for f in bold:
        suf = next(x for x in suffixes if f.key.endswith(x))
        runs.setdefault(f.key[: -len(suf)], set()).add(suf)
    for run, have in sorted(runs.items()):
        if have != set(suffixes):
            missing = sorted(set(suffixes) - have)
            raise DownloadError(f"{where}: {run.rsplit('/', 1)[-1]} of {sub} lacks "
                                f"{', '.join(missing)}")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _complete(path: Path, rf: RemoteFile) -> bool:
    return path.exists() and path.stat().st_size == rf.size and (
        rf.md5 is None or _md5(path) == rf.md5)


def _fetch_one(s3, bucket: str, rf: RemoteFile, dest: Path, bar, endpoint: str | None,
               attempts: int = 5, backoff: float = 0.5) -> None:
    from botocore.exceptions import (ConnectionClosedError, EndpointConnectionError,
                                     FlexibleChecksumError, ReadTimeoutError,
                                     ResponseStreamingError)

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh_tried = False
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if have > rf.size:
            part.unlink()
            have = 0
        try:
            if have < rf.size:
                kw = {"Range": f"bytes={have}-"} if have else {}
                body = s3.get_object(Bucket=bucket, Key=rf.key, **kw)["Body"]
                with open(part, "ab") as f:
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            elif not part.exists():
                part.touch()
        except FlexibleChecksumError as e:  # botocore checked the body against the server's CRC
            part.unlink(missing_ok=True)
            if fresh_tried:
                raise IntegrityError(f"s3://{bucket}/{rf.key}: downloaded bytes do not match the "
                                     f"server's checksum ({e})") from None
            fresh_tried = True
            continue
        except (ConnectionClosedError, ReadTimeoutError, ResponseStreamingError,
                EndpointConnectionError, ConnectionError, OSError) as e:
            attempt += 1
            if attempt >= attempts:
                raise _explain(e, f"s3://{bucket}/{rf.key}", endpoint) from None
            time.sleep(backoff * 2 ** (attempt - 1))
            continue
        except Exception as e:
            raise _explain(e, f"s3://{bucket}/{rf.key}", endpoint) from None
        size = part.stat().st_size
        ok = size == rf.size and (rf.md5 is None or _md5(part) == rf.md5)
        if ok:
            os.replace(part, dest)
            return
        part.unlink()  # a corrupt partial (or a corrupt transfer): start this file again once
        if fresh_tried:
            raise IntegrityError(f"s3://{bucket}/{rf.key}: downloaded {size} bytes that do not "
                                 f"match the server's size {rf.size} / ETag {rf.etag}")
        fresh_tried = True


def fetch_subset(dest: str | Path, subjects: list[str], stories: list[str],
                 derivative: str = "afni-nosmooth", endpoint_url: str | None = None,
                 bucket: str = BUCKET, prefix: str = PREFIX, dry_run: bool = False,
                 progress: bool = True, workers: int = 8, audio: bool = False
                 ) -> list[RemoteFile]:
    """Download the subset into ``dest`` (the dataset root). Returns the plan."""
    from concurrent.futures import ThreadPoolExecutor

    dest = Path(dest)
    s3 = client(endpoint_url)
    plan = plan_subset(subjects, stories, derivative, endpoint_url, bucket, prefix, s3, audio)
    local = {f.key: dest / f.key[len(prefix) + 1:] for f in plan}
    todo = [f for f in plan if not _complete(local[f.key], f)]
    total = sum(f.size for f in plan)
    need = sum(f.size - (local[f.key].with_name(local[f.key].name + ".part").stat().st_size
                         if local[f.key].with_name(local[f.key].name + ".part").exists() else 0)
               for f in todo)
    print(f"ds002345 subset: {len(plan)} files, {total / 1e9:.2f} GB in all; {len(todo)} to "
          f"fetch ({need / 1e9:.2f} GB) into {dest}")
    if dry_run or not todo:
        return plan
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise DownloadError(f"{dest}: {need / 1e9:.2f} GB needed but only {free / 1e9:.2f} GB "
                            f"free")
    with tqdm(total=need, unit="B", unit_scale=True, desc="ds002345", disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = [pool.submit(_fetch_one, s3, bucket, f, local[f.key], bar, endpoint_url)
                for f in todo]
        for j in jobs:
            j.result()            # the first failure is raised, naming its key
    return plan
