"""rlattn.analysis.rhythm: peaks, the three couplings and their baselines, receiver heads, signals.

Hand-built sequences with hand-computed statistics; random sequences without coupling, whose
observed statistics must sit at the random baseline and the baseline at its closed form (1/3 of
interior positions of i.i.d. noise are strict local maxima); the exact baselines against a
test-side Monte Carlo shuffle; per-head FAI and entropies of a tiny model against a naive
full-attention-map reference; a records round trip.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlattn.analysis import rhythm as rh

# x: a hand-built signal whose peaks are {1, 4, 10}: 5 at 1; the plateau 3,3 at 4-5 (left edge);
# the plateau 2,2 at 8-9 rises to 4 at 10, so it is no peak; 4 at 10.
WAAD = [0, 5, 1, 0, 3, 3, 1, 0, 2, 2, 4, 0]
# peaks {2, 7, 10}
FAI = [0, 1, 5, 1, 1, 1, 0, 4, 0, 0, 3, 0]


# ---------------------------------------------------------------------------------------------
# peaks
# ---------------------------------------------------------------------------------------------
def test_find_peaks_hand_built():
    assert np.flatnonzero(rh.find_peaks(WAAD)).tolist() == [1, 4, 10]
    assert np.flatnonzero(rh.find_peaks(FAI)).tolist() == [2, 7, 10]
    # NaN neighbours and end points never make peaks
    assert np.flatnonzero(rh.find_peaks([0, math.nan, 3, 1, 2, 0])).tolist() == [4]
    assert np.flatnonzero(rh.find_peaks([5, 1, 1, 5])).tolist() == []
    assert np.flatnonzero(rh.find_peaks([1, 2, 2, 2])).tolist() == []  # plateau that never falls
    # min quantile: sorted WAAD is 0,0,0,0,1,1,2,2,3,3,4,5; its 0.85-quantile sits at rank
    # 0.85 * 11 = 9.35, i.e. 3 + 0.35 * (4 - 3) = 3.35, so the plateau peak 3 drops out
    assert np.flatnonzero(rh.find_peaks(WAAD, min_quantile=0.85)).tolist() == [1, 10]
    assert np.flatnonzero(rh.find_peaks(WAAD, min_quantile=0.8)).tolist() == [1, 4, 10]  # rank 8.8: 3


def test_peak_eligible():
    assert np.flatnonzero(rh.peak_eligible(WAAD)).tolist() == list(range(1, 11))
    assert np.flatnonzero(rh.peak_eligible([0, 1, math.nan, 1, 2, 0])).tolist() == [4]
    assert rh.peak_eligible([1, 2]).tolist() == [False, False]


# ---------------------------------------------------------------------------------------------
# the couplings on hand-built sequences
# ---------------------------------------------------------------------------------------------
def test_entropy_at_waad_peaks_hand_computed():
    entropy = [9, 1, 0, 0, 2, 0, 0, 0, 0, 0, 3, 9]
    c = rh.entropy_at_peaks(WAAD, entropy)
    # peaks 1, 4, 10 -> (1 + 2 + 3) / 3 = 2; eligible 1..10 -> mean (1 + 2 + 3) / 10 = 0.6
    assert c.peaks == 3 and c.eligible == 10
    assert c.observed == pytest.approx(2.0)
    assert c.random == pytest.approx(0.6)
    assert c.expected == pytest.approx(1.8)


def test_fai_follows_waad_hand_computed():
    c = rh.fai_follows_waad(WAAD, FAI, k=1)
    # WAAD peaks 1, 4, 10 -> positions at or 1 after: 1, 2, 4, 5, 10, 11.
    # FAI peaks 2 (yes), 7 (no), 10 (yes) -> 2/3; eligible FAI positions 1..10, 5 of them qualify
    assert (c.peaks, c.eligible) == (3, 10)
    assert c.observed == pytest.approx(2 / 3)
    assert c.random == pytest.approx(0.5)
    c0 = rh.fai_follows_waad(WAAD, FAI, k=0)  # only exact coincidence: 10
    assert c0.observed == pytest.approx(1 / 3) and c0.random == pytest.approx(0.3)


def test_receiver_global_cooccurrence_hand_computed():
    # receiver peaks 1, 4, 10; global peaks 2, 7, 10
    c = rh.receiver_global_cooccurrence(WAAD, FAI, window=0)
    assert c.observed == pytest.approx(1 / 3)
    assert c.random == pytest.approx(0.3)  # 3 global peaks among the 10 eligible positions
    c1 = rh.receiver_global_cooccurrence(WAAD, FAI, window=1)
    # within 1 of a global peak: 1, 2, 3, 6, 7, 8, 9, 10, 11 -> receiver peaks 1 and 10 qualify
    assert c1.observed == pytest.approx(2 / 3)
    assert c1.random == pytest.approx(0.8)


def test_summarize_coupling_pools_and_bootstraps():
    parts = [rh.Coupling(value=2.0, expected=1.0, peaks=4, eligible=10), rh.Coupling(value=1.0, expected=1.5, peaks=2, eligible=8)]
    s = rh.summarize_coupling(parts, n_boot=500, seed=1)
    assert s["observed"] == pytest.approx(3 / 6)
    assert s["random"] == pytest.approx(2.5 / 6)
    assert s["lift"] == pytest.approx(0.5 / (2.5 / 6) - 1)  # = 0.2
    assert s["per_response_lift"] == pytest.approx([1.0, -1 / 3])
    assert s["peaks"] == 6 and s["eligible"] == 18 and s["responses"] == 2
    assert s["observed_ci"][0] <= s["observed"] <= s["observed_ci"][1]
    # identical responses: every resample gives the same pooled value, the interval is a point
    same = rh.summarize_coupling([parts[0]] * 5, n_boot=200)
    assert same["lift_ci"] == pytest.approx([1.0, 1.0])
    # a response without peaks adds nothing and has no lift
    s2 = rh.summarize_coupling(parts + [rh.Coupling(0.0, 0.0, 0, 5)], n_boot=50)
    assert s2["observed"] == pytest.approx(0.5) and s2["per_response_lift"][2] is None


# ---------------------------------------------------------------------------------------------
# no coupling -> observed at the baseline, the baseline at its closed form
# ---------------------------------------------------------------------------------------------
NO_COUPLING_TOL = 0.01  # absolute; ~26k peaks per statistic, standard errors 0.002-0.003


def test_uncoupled_sequences_sit_at_the_random_baseline():
    rng = np.random.default_rng(0)
    R, T = 400, 200
    ent, fol, coo = [], [], []
    for _ in range(R):
        waad, fai, receiver, entropy = rng.normal(size=(4, T))
        entropy = rng.uniform(size=T)
        ent.append(rh.entropy_at_peaks(waad, entropy))
        fol.append(rh.fai_follows_waad(waad, fai, k=1))
        coo.append(rh.receiver_global_cooccurrence(receiver, fai, window=0))
    ent, fol, coo = (rh.summarize_coupling(x, n_boot=10) for x in (ent, fol, coo))
    for s in (ent, fol, coo):
        assert abs(s["observed"] - s["random"]) < NO_COUPLING_TOL, s
    # closed forms for i.i.d. continuous noise: a third of interior positions are strict local
    # maxima and two maxima are never adjacent, so P(peak at s or s-1) = 2/3 (minus the first
    # eligible position, which has no eligible predecessor: (T-3)/(T-2) * 2/3 + 1/(T-2) * 1/3)
    assert abs(coo["random"] - 1 / 3) < NO_COUPLING_TOL
    assert abs(fol["random"] - (2 / 3 - 1 / (3 * (T - 2)))) < NO_COUPLING_TOL
    assert abs(ent["random"] - 0.5) < NO_COUPLING_TOL  # uniform(0, 1) entropies


def _mc_shuffle(first_peaks, eligible, stat, n, rng):
    """Test-side Monte Carlo: the statistic's mean over the first metric's peaks moved to
    uniformly random eligible positions (count kept)."""
    pos = np.flatnonzero(eligible)
    k = int(first_peaks.sum())
    return np.mean([stat[rng.choice(pos, size=k, replace=False)].mean() for _ in range(n)])


def test_exact_baselines_match_a_monte_carlo_shuffle():
    rng = np.random.default_rng(3)
    T = 60
    waad = np.sin(np.arange(T) / 2.0) + 0.3 * rng.normal(size=T)
    fai = rng.gamma(2.0, size=T)
    fai[-1] = np.nan  # as the engine's FAI at the last response token
    entropy = rng.exponential(size=T)
    n = 20000
    c = rh.entropy_at_peaks(waad, entropy)
    mc = _mc_shuffle(rh.find_peaks(waad), rh.peak_eligible(waad), entropy, n, rng)
    assert c.random == pytest.approx(mc, abs=0.01)
    c = rh.fai_follows_waad(waad, fai, k=2)
    cond = np.array([rh.find_peaks(waad)[max(0, s - 2): s + 1].any() for s in range(T)], dtype=float)
    mc = _mc_shuffle(rh.find_peaks(fai), rh.peak_eligible(fai), cond, n, rng)
    assert c.random == pytest.approx(mc, abs=0.01)


# ---------------------------------------------------------------------------------------------
# kurtosis, receiver heads, Jaccard
# ---------------------------------------------------------------------------------------------
def test_excess_kurtosis_hand_computed():
    # [0,0,0,0,1]: mean 0.2, m2 = 0.16, m4 = 0.0832 -> 0.0832 / 0.0256 - 3 = 0.25
    assert rh.excess_kurtosis([0, 0, 0, 0, 1]) == pytest.approx(0.25)
    assert rh.excess_kurtosis([1, -1, 1, -1, math.nan]) == pytest.approx(-2.0)
    assert math.isnan(rh.excess_kurtosis([2, 2, 2]))


def _signals(kurt, head_fai, global_heads):
    nL, H, T = head_fai.shape
    z = np.zeros(T)
    return rh.ResponseSignals(waad=z, fai=z, entropy=z, head_fai=head_fai, kurtosis=np.asarray(kurt, dtype=float),
                              global_heads=np.asarray(global_heads), local_heads=~np.asarray(global_heads), layers=list(range(nL)))


def test_select_receiver_heads_dataset_and_sequence():
    head_fai = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # [nL=2, H=3, T=4]
    g = np.zeros((2, 3), dtype=bool)
    a = _signals([[1.0, 5.0, 0.0], [2.0, 0.0, math.nan]], head_fai, g)
    b = _signals([[1.0, 1.0, 0.0], [6.0, 0.0, 0.0]], head_fai, g)
    # dataset: mean kurtosis [[1, 3, 0], [4, 0, nan]] -> ceil(0.3 * 6) = 2 heads: (1, 0) and (0, 1)
    shared = rh.select_receiver_heads([a, b], quantile=0.3, selection="dataset")
    assert np.argwhere(shared).tolist() == [[0, 1], [1, 0]]
    assert a.receiver_fai.tolist() == pytest.approx(((head_fai[0, 1] + head_fai[1, 0]) / 2).tolist())
    # sequence: a -> (0, 1), (1, 0); b -> (1, 0) then the tie 1.0/1.0 goes to the lower head (0, 0)
    assert rh.select_receiver_heads([a, b], quantile=0.3, selection="sequence") is None
    assert np.argwhere(b.receiver_heads).tolist() == [[0, 0], [1, 0]]
    with pytest.raises(ValueError, match="receiver_selection='layer'"):
        rh.select_receiver_heads([a], selection="layer")


def test_content_words_and_jaccard():
    a = rh.content_words("The cat has 3 apples.")
    b = rh.content_words("A cat ate 3 pears")
    assert a == {"cat", "3", "apples"} and b == {"cat", "ate", "3", "pears"}
    assert rh.jaccard(a, b) == pytest.approx(2 / 5)
    assert rh.jaccard(set(), set()) == 1.0


def test_config_errors_name_key_value_and_allowed():
    with pytest.raises(ValueError, match=r"follow_window=-1 is invalid: an integer >= 0"):
        rh.RhythmConfig(follow_window=-1)
    with pytest.raises(ValueError, match=r"fai_horizon=\[5, 2\] is invalid"):
        rh.RhythmConfig(fai_horizon=[5, 2])
    with pytest.raises(ValueError, match="receiver_selection='all' is invalid: one of dataset, sequence"):
        rh.RhythmConfig(receiver_selection="all")


def test_unknown_recipe_key_fails_naming_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("limit: 3\nfollow_windw: 2\n")
    with pytest.raises(ValueError, match="follow_windw"):
        rh.parse_rhythm_args([str(recipe)])
    recipe.write_text("limit: 3\nfollow_window: 2\n")
    cfg = rh.parse_rhythm_args([str(recipe), "--cooccur_window", "1"])
    assert (cfg.limit, cfg.follow_window, cfg.cooccur_window) == (3, 2, 1)


# ---------------------------------------------------------------------------------------------
# signals of a tiny model against a naive full-attention-map reference
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from rlattn.testing import tiny_model

    return tiny_model("llama", num_layers=4, num_heads=4, num_kv_heads=2, seed=1, attn_implementation="eager")


def test_measure_response_matches_naive_maps(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 250, (9,), generator=g).tolist()
    completion = torch.randint(3, 250, (30,), generator=g).tolist()
    cfg = rh.RhythmConfig(memory_budget_mb=0.01)  # tiny budget: many chunks of query rows
    sig = rh.measure_response(model, prompt, completion, cfg, n_candidates=3)
    P, T = len(prompt), len(completion)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    assert sig.layers == [1, 2]  # middle third of 4 layers
    for li, layer in enumerate(sig.layers):
        A = out.attentions[layer][0].double()  # [H, N, N]
        for s in range(T - 1):
            rows = A[:, P + s + 1:, P + s]  # every later response row: horizon [1, end]
            assert sig.head_fai[li, :, s] == pytest.approx(rows.mean(1).tolist(), abs=1e-5)
    assert np.isnan(sig.head_fai[:, :, T - 1]).all()
    # global FAI (the engine's) is the mean of the per-head FAI over the global heads
    assert sig.fai[:-1] == pytest.approx(sig.head_fai[sig.global_heads].mean(0)[:-1], abs=1e-5)
    logp = torch.log_softmax(out.logits[0, P - 1: P + T - 1].double(), -1)  # [T, V]
    assert sig.entropy == pytest.approx((-(logp.exp() * logp).sum(-1)).tolist(), abs=1e-4)
    assert sig.candidates[:, 0].tolist() == out.logits[0, P - 1: P + T - 1].argmax(-1).tolist()
    assert sig.kurtosis[0, 0] == pytest.approx(rh.excess_kurtosis(sig.head_fai[0, 0]))


def test_analyze_then_reanalyse_records(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    base = dict(model=str(tmp_path / "m"), limit=3, max_new_tokens=24, batch_size=3, bootstrap=50, device="cpu", plots=False,
                torch_threads=1)
    first = rh.analyze_rhythm(rh.RhythmConfig(output_dir=str(tmp_path / "a"), **base), log=lambda *_: None)
    again = rh.analyze_rhythm(rh.RhythmConfig(output_dir=str(tmp_path / "b"), records=first.files["responses"], **base),
                              log=lambda *_: None)
    assert again.summary["responses"] == 3
    assert again.summary["response_tokens"] == first.summary["response_tokens"]
    for name, c in first.summary["couplings"].items():
        d = again.summary["couplings"][name]
        assert (d["observed"], d["random"], d["peaks"]) == pytest.approx((c["observed"], c["random"], c["peaks"]), nan_ok=True)
