import http.server
import json
import socket
import threading

import numpy as np
import pandas as pd
import pytest

from lib import data, transcripts
from lib.transcripts import AlignmentError, GentleError, read_alignment

from conftest import STIMULI

NTF_JSON = STIMULI / "notthefallintact" / "align.json"


def test_pieman_alignment_facts(paths, pieman_words):
    raw = transcripts.read_align_csv(STIMULI / "pieman" / "align.csv")
    assert len(raw) == 957
    assert int(raw.onset.isna().sum()) == 3
    assert int((raw.aligned_word == "<unk>").sum()) == 19
    timing = data.story_timing("pieman", paths, n_trs=300)
    trs = transcripts.assign_trs(pieman_words, timing, 300)
    assert trs.min() == 10 and trs.max() == 286
    assert (~pieman_words.aligned).sum() == 3


def test_interpolation_rule():
    df = pd.DataFrame({"word": list("abcdef"), "aligned_word": list("abcdef"),
                       "onset": [np.nan, 1.0, np.nan, np.nan, 4.0, np.nan],
                       "offset": [np.nan, 2.0, np.nan, np.nan, 5.0, np.nan]})
    out = transcripts.interpolate_missing(df)
    # two missing words between offset 2.0 and onset 4.0 share [2, 4] equally
    assert out.onset.tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert out.offset.tolist()[2:4] == [3.0, 4.0]
    assert out.aligned.tolist() == [False, True, False, False, True, False]


def test_json_and_csv_agree():
    js = transcripts.read_align_json(NTF_JSON)
    cs = transcripts.read_align_csv(STIMULI / "notthefallintact" / "align_uncorrected.csv")
    assert len(js) == 1601
    assert int(js.onset.isna().sum()) == 40
    found = js.onset.notna()
    assert js.word.tolist() == cs.word.tolist()
    np.testing.assert_allclose(js.onset[found], cs.onset[found], atol=1e-3)


def test_malformed_csv_row(tmp_path):
    f = tmp_path / "align.csv"
    f.write_text("I,i,1.0,1.2\nbegan,began,1.3\n")
    with pytest.raises(AlignmentError, match=r"align\.csv: line 2: expected 4 fields"):
        transcripts.read_align_csv(f)
    f.write_text("I,i,1.0,abc\n")
    with pytest.raises(AlignmentError, match=r"line 1: offset 'abc' is not a number"):
        transcripts.read_align_csv(f)


def test_non_monotonic_onsets(tmp_path):
    f = tmp_path / "align.csv"
    f.write_text("a,a,1.0,1.2\nb,b,,\nc,c,0.5,0.7\n")
    with pytest.raises(AlignmentError, match=r"align\.csv: line 3: onset 0\.5 goes back in time"):
        transcripts.read_align_csv(f)


def test_json_that_is_not_gentle(tmp_path):
    f = tmp_path / "align.json"
    f.write_text(json.dumps({"results": []}))
    with pytest.raises(AlignmentError, match=r"align\.json: not Gentle output"):
        transcripts.read_align_json(f)
    f.write_text("{not json")
    with pytest.raises(AlignmentError, match="not valid JSON"):
        transcripts.read_align_json(f)


def test_words_off_the_scan(paths, pieman_words):
    timing = data.story_timing("pieman", paths, n_trs=300)
    with pytest.raises(data.DataError, match="outside the 200-TR scan"):
        transcripts.assign_trs(pieman_words, timing, 200, "pieman/align.csv")


def test_text_styles(pieman_words):
    assert pieman_words.text.tolist() == pieman_words.word.tolist()     # default: words
    punct = transcripts.story_transcript(STIMULI / "pieman" / "align.csv",
                                         STIMULI / "pieman" / "transcript.txt", "punctuated")
    assert "Ram," in punct.text.tolist() and len(punct) == 957
    with pytest.raises(data.DataError, match="needs the story's transcript.txt"):
        transcripts.story_transcript(STIMULI / "tunnel" / "align.csv", None, "punctuated")


def test_utterance_lines_split_at_pauses(pieman_words):
    text = transcripts.story_text(pieman_words)
    lines = text.split("\n")
    assert 80 < len(lines) < 120                                 # ~9 words per line at 0.5 s
    assert transcripts.flatten(text) == " ".join(pieman_words.text)


def test_corpus_index_roundtrip(tmp_path):
    texts = {"b": "two words", "a": "one. two three"}
    idx = transcripts.write_corpus(texts, tmp_path / "train_narratives.txt")
    assert idx.story.tolist() == ["a", "b"] and idx.n_words.tolist() == [3, 2]
    assert transcripts.read_corpus(tmp_path / "train_narratives.txt") == texts


def test_build_transcripts(mini, paths, tmp_path):
    m = data.build_manifest(mini, stories=["pieman"], paths=paths)
    res = transcripts.build_transcripts(m, tmp_path / "tr", [paths.stimuli])
    assert res["stories"].n_words.tolist() == [957]
    assert set(res["corpus"].story) >= {"pieman", "piemanpni", "tunnel", "black"}
    t = transcripts.read_transcript(tmp_path / "tr" / "pieman.tsv")
    assert t.tr.min() == 10 and t.tr.max() == 286
    # the text a model is fine-tuned on is the text it is scored on, for every style
    corpus = transcripts.read_corpus(tmp_path / "tr" / "train_narratives.txt")
    assert transcripts.flatten(corpus["pieman"]) == " ".join(t.text.astype(str))
    res = transcripts.build_transcripts(m, tmp_path / "tp", [paths.stimuli],
                                        text_style="punctuated")
    corpus = transcripts.read_corpus(tmp_path / "tp" / "train_narratives.txt")
    t = transcripts.read_transcript(tmp_path / "tp" / "pieman.tsv")
    assert "Ram," in t.text.tolist()
    assert transcripts.flatten(corpus["pieman"]) == " ".join(t.text.astype(str))
    assert set(corpus) == {"pieman", "lucy", "merlin", "notthefallintact"}
    assert "tunnel" in res["skipped"]


# ----------------------------------------------------------------- Gentle client vs local server
class _Gentle(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        if self.mode == "ok":
            assert b"name=\"audio\"" in body and b"name=\"transcript\"" in body
            assert self.path.startswith("/transcriptions")
            payload, code = NTF_JSON.read_bytes(), 200
        elif self.mode == "500":
            payload, code = b"internal error", 500
        else:
            payload, code = b"<html>not json</html>", 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def gentle_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gentle)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def audio(tmp_path):
    a = tmp_path / "story.wav"
    a.write_bytes(b"RIFF0000WAVEfake")
    return a


def test_gentle_client_parses_real_json(gentle_server, audio, tmp_path):
    _Gentle.mode = "ok"
    out = tmp_path / "align.json"
    df = transcripts.gentle_align(audio, STIMULI / "notthefallintact" / "transcript.txt",
                                  url=gentle_server, timeout=10, out=out)
    assert len(df) == 1601 and df.onset.notna().all() and (~df.aligned).sum() == 40
    assert json.loads(out.read_text())["words"][0]["word"] == "So"


def test_gentle_client_errors(gentle_server, audio):
    tr = STIMULI / "notthefallintact" / "transcript.txt"
    _Gentle.mode = "500"
    with pytest.raises(GentleError, match="answered HTTP 500"):
        transcripts.gentle_align(audio, tr, url=gentle_server, timeout=10)
    _Gentle.mode = "html"
    with pytest.raises(GentleError, match="not JSON"):
        transcripts.gentle_align(audio, tr, url=gentle_server, timeout=10)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(GentleError, match="could not reach Gentle"):
        transcripts.gentle_align(audio, tr, url=f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(GentleError, match="file not found"):
        transcripts.gentle_align(audio.with_name("missing.wav"), tr, url=gentle_server)


def test_one_recording_under_two_names_is_one_stimulus():
    from lib.engine import Layout, blocked_folds
    from lib.transcripts import stimulus_groups

    texts = {s: " ".join(read_alignment(STIMULI / s / "align.csv").word)
             for s in ("pieman", "piemanpni", "tunnel")}
    groups = stimulus_groups(texts)
    assert groups == {"pieman": "pieman", "piemanpni": "pieman", "tunnel": "tunnel"}
    # a subject who heard both: one story in the layout, so no fold trains on one name of the
    # recording and tests on the other (blocks of story time, every hearing held out at once)
    lay = Layout.of_runs([100, 100], [groups["pieman"], groups["piemanpni"]])
    assert lay.names == ("pieman",)
    for train, test in blocked_folds(lay, 5, 10):
        assert not set(lay.pos[train]) & set(lay.pos[test])
