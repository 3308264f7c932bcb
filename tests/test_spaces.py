"""Feature spaces: word-level values, Lanczos downsampling, audio envelope, surprisal."""
import numpy as np
import pytest

from lib import features, spaces
from lib.data import DataError

TR = 1.5


# --------------------------------------------------------------------------- Lanczos
def test_lanczos_constant_rate_matches_the_sum_scale():
    """A word every 0.3 s with value 1: interior TRs get 5 (= words per TR, the sum's scale)."""
    t = np.arange(0, 300, 0.3)
    out = spaces.tr_features(np.ones(len(t)), np.zeros(len(t), int), 200, "lanczos",
                             word_times=t, tr=TR)[:, 0]
    np.testing.assert_allclose(out[10:190], 5.0, rtol=0.02)


def test_lanczos_single_impulse():
    w = spaces.lanczos_matrix(np.array([15.0]), 30, TR)[:, 0]      # exactly at TR 10
    assert w[10] == pytest.approx(1.0) and np.allclose(np.delete(w, 10), 0, atol=1e-12)
    w = spaces.lanczos_matrix(np.array([15.75]), 30, TR)[:, 0]     # half way to TR 11
    assert w[10] == pytest.approx(w[11]) and w.argmax() in (10, 11)
    assert np.all(w[np.abs(np.arange(30) * TR - 15.75) >= 3 * TR] == 0)  # window of 3 lobes


def test_lanczos_passes_slow_sinusoids_and_stops_fast_ones():
    """Cut-off at the TR's Nyquist rate, 1 / (2 TR) = 0.33 Hz."""
    t = np.arange(0, 600, 0.05)
    tr_t = np.arange(400) * TR
    amp = {}
    for f in (0.05, 0.6):
        out = spaces.tr_features(np.sin(2 * np.pi * f * t), np.zeros(len(t), int), 400,
                                 "lanczos", word_times=t, tr=TR)[20:380, 0]
        ref = np.sin(2 * np.pi * f * tr_t[20:380])
        amp[f] = out.std()
        if f < 1 / (2 * TR):
            assert np.corrcoef(out, ref)[0, 1] > 0.99
    assert amp[0.6] < 0.05 * amp[0.05]


def test_sum_and_mean():
    acts = np.array([[1.0], [3.0], [5.0]])
    assert spaces.tr_features(acts, np.array([0, 0, 2]), 4, "sum")[:, 0].tolist() == [4, 0, 5, 0]
    assert spaces.tr_features(acts, np.array([0, 0, 2]), 4, "mean")[:, 0].tolist() == [2, 0, 5, 0]
    with pytest.raises(ValueError, match="aggregation must be"):
        spaces.tr_features(acts, np.array([0, 0, 2]), 4, "median")


# --------------------------------------------------------------------------- word spaces
def test_word_level_spaces():
    words = ["The", "illustrious", "reporter's", "hard-boiled", "xqztv"]
    assert spaces.word_values("word_rate", words)[0][:, 0].tolist() == [1] * 5
    assert spaces.word_values("word_length", words)[0][:, 0].tolist() == [3, 11, 9, 10, 5]
    f, info = spaces.word_values("word_frequency", words)
    assert f[0, 0] > 7 > f[1, 0] > 2 and f[4, 0] == 0 and info["unknown_words"] == 1
    ph, info = spaces.word_values("phonemes", words)
    names = spaces.phoneme_set()
    assert ph.shape == (5, 1 + len(names)) and len(names) == 39
    assert ph[0, 0] == 2 and ph[0, 1 + names.index("DH")] == 1           # the = DH AH0
    assert ph[3, 0] > 5                                                  # hard + boiled
    assert info["out_of_dictionary"] == 1 and ph[4, 0] == 5 and ph[4, 1:].sum() == 0
    with pytest.raises(ValueError, match="unknown word-level space"):
        spaces.word_values("syntax", words)


def test_word_spaces_are_cached(pieman_words, tmp_path, monkeypatch):
    a, info = spaces.cached_word_values("phonemes", pieman_words, "pieman", tmp_path)
    assert a.shape == (957, 40) and "out_of_dictionary" in info
    monkeypatch.setattr(spaces, "word_values", lambda *a: (_ for _ in ()).throw(AssertionError))
    b, info2 = spaces.cached_word_values("phonemes", pieman_words, "pieman", tmp_path)
    np.testing.assert_array_equal(a, b)
    assert info2 == info


# --------------------------------------------------------------------------- audio
def test_audio_envelope_on_a_generated_wav(tmp_path):
    from scipy.io import wavfile

    rate = 8000
    x = np.zeros(rate * 9)
    on = slice(rate * 3, rate * 4)                                 # a tone from 3 s to 4 s
    x[on] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    wav = tmp_path / "story_audio.wav"
    wavfile.write(wav, rate, (x * 32767).astype(np.int16))
    env = spaces.audio_envelope(wav, 10, TR, audio_start_s=1.5)[:, 0]   # audio starts at TR 1
    # the tone plays at scan time 4.5-5.5 s: TR 3
    assert env.argmax() == 3 and env[3] > 5 * np.median(env[env > 0])
    assert env[0] == 0                                             # before the audio starts
    with pytest.raises(DataError, match="not a readable WAV"):
        bad = tmp_path / "bad.wav"
        bad.write_bytes(b"nope")
        spaces.audio_envelope(bad, 10, TR, 0.0)


# --------------------------------------------------------------------------- surprisal
def test_surprisal_from_the_same_pass_equals_a_direct_computation(tiny, pieman_words):
    import torch

    words = pieman_words.text.tolist()[:60]
    res = features.windowed_activations(tiny, words, layer=1, context=32, surprisal=True,
                                        progress=False)
    ids, ends = features.tokenize_words(words, tiny.tokenizer)
    starts = np.r_[0, ends[:-1]]
    eot = features.start_token(tiny.tokenizer)
    for w in (0, 5, 40, 59):                       # each word in its own window's context
        s = res["context_start"][w]
        seq = torch.tensor([np.r_[eot, ids[s:ends[w]]]])
        with torch.no_grad():
            lp = torch.log_softmax(tiny.model(seq).logits[0], -1).numpy()
        q = np.arange(starts[w] - s + 1, ends[w] - s + 1)
        assert res["surprisal"][w] == pytest.approx(-lp[q - 1, seq[0, q].numpy()].sum(), rel=1e-4)
    np.testing.assert_allclose(res["activations"], features.windowed_activations(
        tiny, words, layer=1, context=32, progress=False)["activations"], atol=1e-5)


def test_the_chance_design_shifts_the_delayed_features_of_the_first_kept_trs_too():
    """Before: the kept TRs were rolled after the trim, so the first kept TRs' delayed copies
    still came from the correctly aligned TRs just before the trim."""
    n, kept, delays = 60, slice(10, 55), (1, 2, 3, 4, 5)
    F = np.arange(n, dtype=float)[:, None]                   # each TR's feature = its index
    aligned = spaces.design_matrix(F, kept, delays)
    chance = spaces.design_matrix(F, kept, delays, mismatched=True)
    assert chance.shape == aligned.shape
    shifted = np.roll(np.arange(10, 55), 45 // 2)              # the kept block, rolled
    for d_i, d in enumerate(delays):                          # every delayed copy is the rolled
        expect = np.r_[shifted[-d:], shifted[:-d]]            # sequence, never a TR < 10
        np.testing.assert_array_equal(chance[:, d_i], expect)
    assert not (chance < 10).any() and not np.array_equal(chance, aligned)
