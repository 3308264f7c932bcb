"""lib.download against a real S3 protocol peer on loopback (moto's server), seeded with a small
tree that uses ds002345's real key layout (small SYNTHETIC NIfTIs)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from lib import download
from lib.download import DownloadError, IntegrityError

from conftest import REPO, free_port

BUCKET, PREFIX = "openneuro.org", "ds002345"
DERIV = "_space-MNI152NLin2009cAsym_res-native_desc-clean_bold.nii.gz"
SURF = "_space-fsaverage6_hemi-{}_desc-clean.func.gii"



@pytest.fixture(scope="module")
def s3_server(mini, tmp_path_factory):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    url = f"http://127.0.0.1:{port}"
    admin = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                         aws_access_key_id="test", aws_secret_access_key="test")
    admin.create_bucket(Bucket=BUCKET)
    admin.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
    put = lambda key, path: admin.upload_file(str(path), BUCKET, f"{PREFIX}/{key}")
    put("dataset_description.json", mini / "dataset_description.json")
    put("participants.tsv", mini / "participants.tsv")
    put("task-pieman_bold.json", mini / "task-pieman_bold.json")
    for sub in ["sub-001", "sub-002", "sub-003"]:
        base = f"{sub}_task-pieman_run-1"
        f = mini / sub / "func"
        put(f"{sub}/func/{base}_bold.nii.gz", f / f"{base}_bold.nii.gz")
        put(f"{sub}/func/{base}_events.tsv", f / f"{base}_events.tsv")
        put(f"derivatives/afni-nosmooth/{sub}/func/{base}{DERIV}", f / f"{base}_bold.nii.gz")
        # another story that the subset must not fetch
        put(f"{sub}/func/{sub}_task-tunnel_events.tsv", f / f"{base}_events.tsv")
    gii = tmp_path_factory.mktemp("gii") / "hemi.func.gii"    # content is not read by a plan
    gii.write_bytes(b"<GIFTI/>")
    for sub, hemis in (("sub-001", "LR"), ("sub-002", "LR"), ("sub-003", "L")):
        for h in hemis:
            put(f"derivatives/afni-nosmooth/{sub}/func/{sub}_task-pieman_run-1{SURF.format(h)}", gii)
    for name in ["align.csv", "transcript.txt"]:
        put(f"stimuli/gentle/pieman/{name}", mini / "stimuli/gentle/pieman" / name)
    from scipy.io import wavfile    # a short generated stand-in for the story's audio

    wav = tmp_path_factory.mktemp("wav") / "pieman_audio.wav"
    wavfile.write(wav, 8000, (1000 * np.sin(np.arange(8000 * 3) / 5)).astype(np.int16))
    put("stimuli/pieman_audio.wav", wav)
    yield url, admin
    srv.stop()


def test_unsigned_listing_needs_public_policy(s3_server):
    url, _ = s3_server
    plan = download.plan_subset(["sub-002"], ["pieman"], "afni-nosmooth", url)
    keys = [f.key for f in plan]
    assert f"{PREFIX}/derivatives/afni-nosmooth/sub-002/func/sub-002_task-pieman_run-1{DERIV}" in keys
    assert f"{PREFIX}/sub-002/func/sub-002_task-pieman_run-1_events.tsv" in keys
    assert f"{PREFIX}/stimuli/gentle/pieman/align.csv" in keys
    assert not any("tunnel" in k for k in keys)
    assert not any(k.endswith("_bold.nii.gz") and "/derivatives/" not in k for k in keys)


def test_surface_download_plan_lists_both_hemispheres(s3_server):
    url, _ = s3_server
    keys = [f.key for f in download.plan_subset(["sub-001", "sub-002"], ["pieman"], "fsaverage6",
                                                endpoint_url=url)]
    for sub in ("sub-001", "sub-002"):
        for h in "LR":
            assert (f"{PREFIX}/derivatives/afni-nosmooth/{sub}/func/{sub}_task-pieman_run-1"
                    f"{SURF.format(h)}") in keys
        assert f"{PREFIX}/{sub}/func/{sub}_task-pieman_run-1_events.tsv" in keys
    assert not any(k.endswith(".nii.gz") for k in keys)          # no volume comes along
    assert not any("tunnel" in k for k in keys)
    with pytest.raises(DownloadError, match="sub-003.*hemi-R"):
        download.plan_subset(["sub-003"], ["pieman"], "fsaverage6", endpoint_url=url)


def test_full_fetch_then_skip(s3_server, tmp_path, capsys):
    url, _ = s3_server
    plan = download.fetch_subset(tmp_path / "ds", ["sub-002", "sub-003"], ["pieman"],
                                 "afni-nosmooth", url, progress=False)
    for f in plan:
        p = tmp_path / "ds" / f.key[len(PREFIX) + 1:]
        assert p.stat().st_size == f.size
    assert not list((tmp_path / "ds").rglob("*.part"))
    out = capsys.readouterr().out
    assert f"{len(plan)} files" in out and "GB in all" in out
    download.fetch_subset(tmp_path / "ds", ["sub-002", "sub-003"], ["pieman"], "afni-nosmooth",
                          url, progress=False)
    assert "0 to fetch" in capsys.readouterr().out


def test_resume_after_interruption(s3_server, tmp_path, monkeypatch):
    url, _ = s3_server
    dest = tmp_path / "ds"
    real = download._fetch_one
    calls = {"n": 0}

    def interrupted(s3, bucket, rf, path, bar, endpoint, **kw):
        calls["n"] += 1
        if rf.key.endswith(DERIV):       # the connection dies half-way through a BOLD file
            body = s3.get_object(Bucket=bucket, Key=rf.key, Range=f"bytes=0-{rf.size // 2 - 1}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(path.name + ".part").write_bytes(body["Body"].read())
            raise KeyboardInterrupt
        return real(s3, bucket, rf, path, bar, endpoint, **kw)

    monkeypatch.setattr(download, "_fetch_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download.fetch_subset(dest, ["sub-002"], ["pieman"], "afni-nosmooth", url,
                              progress=False)
    bold = dest / "derivatives/afni-nosmooth/sub-002/func" / f"sub-002_task-pieman_run-1{DERIV}"
    part = bold.with_name(bold.name + ".part")
    assert part.exists() and not bold.exists()           # nothing half-written under its name
    monkeypatch.setattr(download, "_fetch_one", real)
    plan = download.fetch_subset(dest, ["sub-002"], ["pieman"], "afni-nosmooth", url,
                                 progress=False)
    rf = next(f for f in plan if f.key.endswith(DERIV))
    assert bold.stat().st_size == rf.size and download._md5(bold) == rf.md5
    assert not part.exists()


def test_corrupted_partial_file_is_detected_and_replaced(s3_server, tmp_path):
    url, _ = s3_server
    dest = tmp_path / "ds"
    bold = dest / "sub-003/func/sub-003_task-pieman_run-1_bold.nii.gz"
    bold.parent.mkdir(parents=True)
    bold.with_name(bold.name + ".part").write_bytes(b"garbage" * 1000)
    plan = download.fetch_subset(dest, ["sub-003"], ["pieman"], "raw", url, progress=False)
    rf = next(f for f in plan if f.key.endswith("_bold.nii.gz"))
    assert download._md5(bold) == rf.md5


def test_integrity_failure_is_an_error(s3_server, tmp_path, monkeypatch):
    url, _ = s3_server
    import botocore.response

    real_read = botocore.response.StreamingBody.read

    def flip(self, *a, **k):
        b = real_read(self, *a, **k)
        return bytes([b[0] ^ 0xFF]) + b[1:] if b else b

    monkeypatch.setattr(botocore.response.StreamingBody, "read", flip)
    with pytest.raises(IntegrityError, match=r"do not match the server's (checksum|size)"):
        download.fetch_subset(tmp_path / "ds", ["sub-002"], ["pieman"], "raw", url,
                              progress=False)
    assert not list((tmp_path / "ds").rglob("*_bold.nii.gz"))


def test_clear_errors(s3_server, tmp_path):
    url, admin = s3_server
    with pytest.raises(DownloadError, match="no afni-nosmooth BOLD for sub-009"):
        download.plan_subset(["sub-009"], ["pieman"], "afni-nosmooth", url)
    with pytest.raises(DownloadError, match=r"stimuli/gentle/tunnel/: no alignment"):
        download.plan_subset(["sub-002"], ["pieman", "tunnel"], "raw", url)
    with pytest.raises(DownloadError, match="cannot reach http://127.0.0.1:"):
        download.plan_subset(["sub-002"], ["pieman"], "raw", f"http://127.0.0.1:{free_port()}")
    admin.create_bucket(Bucket="private")                 # no public-read policy
    admin.put_object(Bucket="private", Key=f"{PREFIX}/a.json", Body=b"{}")
    bar = type("B", (), {"update": lambda *a: None})()
    with pytest.raises(DownloadError, match="a.json: access denied"):
        download._fetch_one(download.client(url), "private",
                            download.RemoteFile(f"{PREFIX}/a.json", 2, '"x"'), tmp_path / "a.json",
                            bar, url)
    with pytest.raises(DownloadError, match="unknown derivative"):
        download.plan_subset(["sub-002"], ["pieman"], "afni-weird", url)
    # a key that vanished between listing and download
    rf = download.RemoteFile(f"{PREFIX}/sub-002/func/gone.tsv", 10, '"x"')
    with pytest.raises(DownloadError, match="gone.tsv: not found"):
        download._fetch_one(download.client(url), BUCKET, rf, tmp_path / "gone.tsv", bar, url)


@pytest.mark.slow
def test_stage01_notebook_with_real_profile_on_loopback(s3_server, tmp_path, project_root):
    import os

    import nbformat
    import pandas as pd

    url, _ = s3_server
    env = {**os.environ, "NARRATIVES_ROOT": str(project_root), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "lib.pipeline", "--profile", "params/narratives.yaml",
         "--run", "real-loopback", "--only", "01_data",
         "--set", f"openneuro_endpoint={url}", "--set", f"bids_root={tmp_path / 'ds002345'}",
         "--set", "subjects=[sub-001, sub-002, sub-003]", "--set", "stories=[pieman]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = project_root / "results" / "real-loopback"
    m = pd.read_csv(run / "data" / "data_manifest.csv")
    assert m.subject.tolist() == ["sub-001", "sub-002", "sub-003"]
    assert m.bold_path.str.contains("derivatives/afni-nosmooth").all()
    assert m.excluded.tolist() == [True, False, False]
    assert m.audio_path.str.endswith("stimuli/pieman_audio.wav").all()     # download_audio
    nb = nbformat.read(run / "notebooks" / "01_data.ipynb", 4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
