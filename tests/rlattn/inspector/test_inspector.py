"""rlattn.inspector and scripts/inspect_credit.py: the trace data, the HTML page, the PNG plots.

Hand-checked selections on a 5-token trace; model traces checked against an independent call of
compute_attention_stats / select_tokens / get_credit_fn; the entropy pass driven by what a
strategy declares (strategy_needs) and extra model inputs reaching every forward; token texts
decoded by the tokenizer with multi-byte characters whole; the page parsed as HTML (balanced tags,
no external resource, embedded data matching the trace) and its assets read from package data;
rollout records rendered without model weights; an 8K-token synthetic trace held to the stated
size bound (< 2 MB with both plots); the command line parsed with AttnCreditConfig (credit_* and
attn_* options, a YAML recipe, repeated flags); the script run in subprocesses (``--help`` must
not be shadowed by the stdlib ``inspect``).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from rlattn import inspector as ri

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "inspect_credit.py"
LONG_TRACE_MAX_BYTES = 2_000_000  # the documented bound for an 8K-token trace (docs/inspector.md)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictParser(HTMLParser):
    """Balanced-tag check plus what the tests need: scripts, resource attributes, element counts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.doctype = None
        self.counts: dict[str, int] = {}
        self.resources: list[str] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None
        self._buf: list[str] = []
        self.ids: list[str] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if "id" in a:
            self.ids.append(a["id"])
        for key in ("src", "href", "data", "poster", "action"):
            if key in a:
                self.resources.append(a[key])
        if tag == "script":
            self._in_script, self._buf = a, []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag == "script":
            self.scripts.append((self._in_script, "".join(self._buf)))
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            self._buf.append(data)


def parse_page(page: str) -> StrictParser:
    p = StrictParser()
    p.feed(page)
    p.close()
    assert p.errors == [], p.errors
    assert p.stack == [], f"unclosed tags: {p.stack}"
    assert p.doctype and p.doctype.lower() == "doctype html"
    assert p.counts.get("html") == p.counts.get("head") == p.counts.get("body") == p.counts.get("title") == 1
    assert len(p.ids) == len(set(p.ids)), "duplicate element ids"
    return p


def page_data(p: StrictParser) -> dict:
    blobs = [body for attrs, body in p.scripts if attrs.get("type") == "application/json"]
    assert len(blobs) == 1
    return json.loads(blobs[0])


def assert_self_contained(page: str, p: StrictParser) -> None:
    for ref in p.resources:
        assert ref.startswith("data:"), f"external resource {ref[:60]!r}"
    low = page.lower()
    for needle in ("http://", "https://", "//cdn", "@import", "url(", "<link", "fetch(", "xmlhttprequest", "import("):
        assert needle not in low, f"page contains {needle!r}"
    assert all(not a.get("src") for a, _ in p.scripts), "scripts must be inline"


def five_token_trace(**kwargs) -> ri.Trace:
    # WAAD [1,4,4,2,2] -> Δ [3,0,2,0,0]; FAI [.1,.5,NaN,.3,.9]
    return ri.build_trace(
        [1.0, 4.0, 4.0, 2.0, 2.0], [0.1, 0.5, None, 0.3, 0.9],
        token_ids=[10, 11, 12, 13, 14], tokens=["To", " solve", ",", " we", " add"], **kwargs,
    )


@pytest.fixture(scope="module")
def tiny():
    from rlattn.tiny import tiny_model

    return tiny_model("llama", num_layers=3, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a checkpoint dir, for --model."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny[0].save_pretrained(path)
    tiny[1].save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def smollm_tokenizer():
    """The embedded model's tokenizer (no weights): what decodes the records below."""
    from rlattn.models import DEFAULT_MODEL, load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def model_trace(tiny):
    model, tok = tiny
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(0, 256, (20,), generator=g).tolist()
    completion_ids = torch.randint(0, 256, (40,), generator=g).tolist()
    tr = ri.trace_from_model(model, tok, prompt_ids, completion_ids,
                             strategies=["coupled", "local_chunk", "high_entropy"], label="tiny", meta={"model": "tiny-llama"})
    return tr, prompt_ids, completion_ids


# ---------------------------------------------------------------------------------------------
# trace data
# ---------------------------------------------------------------------------------------------
def test_hand_checked_selection_and_gamma():
    tr = five_token_trace(strategies=["coupled", "local_chunk", "global_anchor"])
    # Δ: quantile(Δ, 0.6) over [0,0,0,2,3] = 0.8 -> preplan {0, 2}
    assert tr.delta == [3.0, 0.0, 2.0, 0.0, 0.0]
    assert tr.flags["preplan"] == [True, False, True, False, False]
    # FAI finite [.1,.5,.3,.9]: quantile 0.6 = 0.46 -> anchors {1, 4}
    assert tr.flags["anchor"] == [False, True, False, False, True]
    # anchor 4: WAAD 2 <= median 2 and max Δ over [1,3] = 2 >= 0.8 -> dominated, intro argmax = 2
    assert tr.flags["dominated"] == [False, False, False, False, True]
    assert tr.flags["intro"] == [False, False, True, False, False]
    assert tr.links == [(2, 4)]
    assert tr.gammas["coupled"] == [1.0, 1.5, 1.25, 1.0, 1.25]
    assert tr.gammas["local_chunk"] == [1.5, 1.0, 1.5, 1.0, 1.0]
    assert tr.gammas["global_anchor"] == [1.0, 1.5, 1.0, 1.0, 1.5]
    assert math.isnan(tr.fai[2])


def test_credit_config_changes_selection():
    tr = five_token_trace(strategies=["global_anchor"], credit_config={"quantile": 0.25, "gamma": 2.0})
    # FAI finite [.1,.5,.3,.9]: quantile 0.75 = 0.6 -> only token 4
    assert tr.flags["anchor"] == [False, False, False, False, True]
    assert tr.gammas["global_anchor"] == [1.0, 1.0, 1.0, 1.0, 2.0]
    assert tr.credit_config["quantile"] == 0.25 and "strategy" not in tr.credit_config


def test_build_trace_errors():
    with pytest.raises(ValueError, match="waad has 5 tokens but fai has 4"):
        ri.build_trace([1.0] * 5, [0.1] * 4, token_ids=[1] * 5, tokens=["a"] * 5)
    with pytest.raises(ValueError, match="unknown credit strategy 'nope'; valid names"):
        five_token_trace(strategies=["nope"])
    with pytest.raises(ValueError, match="high_entropy.*entropies"):
        five_token_trace(strategies=["high_entropy"])


def test_model_trace_matches_credit_computation(tiny, model_trace):
    from rlattn.credit import CreditConfig, compute_attention_stats, get_credit_fn, select_tokens

    model, _ = tiny
    tr, prompt_ids, completion_ids = model_trace
    P, T = len(prompt_ids), len(completion_ids)
    assert len(tr) == T and tr.token_ids == completion_ids
    ids = torch.tensor([prompt_ids + completion_ids])
    rm = torch.zeros_like(ids, dtype=torch.bool)
    rm[:, P:] = True
    stats = compute_attention_stats(model, ids, torch.ones_like(ids), rm)
    waad, fai = stats.waad[:, P:], stats.fai[:, P:]
    mask = torch.ones(1, T, dtype=torch.bool)
    torch.testing.assert_close(torch.tensor([tr.waad]), waad)
    torch.testing.assert_close(torch.tensor([tr.fai]), fai, equal_nan=True)
    sets = select_tokens(waad, fai, mask, CreditConfig())
    for key in ri.FLAG_KEYS:
        assert tr.flags[key] == sets[key][0].tolist(), key
    assert any(tr.flags["anchor"]) and any(tr.flags["preplan"])
    for name in ("coupled", "local_chunk"):
        expected = get_credit_fn(name)(waad=waad, fai=fai, mask=mask, config=CreditConfig(strategy=name))
        assert tr.gammas[name] == expected[0].tolist(), name
    # high_entropy: TopQ of the entropy of the distribution that produced each response token
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, P - 1 : P + T - 1].float(), -1)
    ent = -(logp.exp() * logp).sum(-1)[None]
    expected = get_credit_fn("high_entropy")(waad=waad, fai=fai, mask=mask, entropies=ent, config=CreditConfig(strategy="high_entropy"))
    assert tr.gammas["high_entropy"] == expected[0].tolist() and 1.5 in tr.gammas["high_entropy"]
    # links: one per dominated anchor, from its intro token
    assert sorted(a for _, a in tr.links) == [t for t in range(T) if tr.flags["dominated"][t]]
    assert {u for u, _ in tr.links} == {t for t in range(T) if tr.flags["intro"][t]}
    assert all(a - 3 <= u < a for u, a in tr.links)
    # per-trace metadata: head spans of the selected layers, 30% local / 30% global
    assert tr.layers == stats.layers and len(tr.head_span) == len(stats.layers)
    n = len(stats.layers) * len(tr.head_span[0])
    assert sum(map(sum, tr.local_heads)) == math.ceil(0.3 * n) == sum(map(sum, tr.global_heads))
    assert tr.stats_config["layers"] == stats.layers and tr.meta["prompt_tokens"] == P


def test_generate_trace_greedy(tiny):
    model, tok = tiny
    tr = ri.generate_trace(model, tok, "What is 2+3?", max_new_tokens=6, strategies=["coupled"])
    assert 1 <= len(tr) <= 6
    assert "".join(tr.tokens) == tok.decode(tr.token_ids)  # byte tokenizer: one char per token
    assert tr.prompt == "What is 2+3?" and tr.meta["generation"] == "greedy, max_new_tokens=6"
    again = ri.generate_trace(model, tok, "What is 2+3?", max_new_tokens=6, strategies=["coupled"])
    assert again.token_ids == tr.token_ids  # greedy is deterministic
    with pytest.raises(ValueError, match="max_new_tokens=0 is invalid"):
        ri.generate_trace(model, tok, "x", max_new_tokens=0)


@pytest.fixture
def entropy_strategy():
    """A strategy under a new name that declares it needs entropies: γ = 1 + entropy (normalised)."""
    from rlattn.credit import CREDIT_REGISTRY, register_credit

    name = "inspector_test_by_entropy"

    @register_credit(name, needs=("attention", "entropies"))
    def by_entropy(waad, fai, mask, entropies=None, config=None):
        return 1.0 + entropies / entropies.max()  # [B, T]

    yield name
    CREDIT_REGISTRY.pop(name)


def _forward_spy(monkeypatch, model, extra: str):
    """Record each forward's keyword arguments; drop ``extra`` (a stand-in input) before the real forward."""
    calls = []
    forward = model.forward

    def spy(*args, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop(extra, None)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def test_strategy_needs_drive_the_entropy_pass(monkeypatch, model_trace, entropy_strategy):
    from rlattn.tiny import tiny_model

    model, tok = tiny_model("llama", num_layers=3, seed=0)
    calls = _forward_spy(monkeypatch, model, "unused")
    _, prompt_ids, completion_ids = model_trace
    P, T = len(prompt_ids), len(completion_ids)
    ri.trace_from_model(model, tok, prompt_ids, completion_ids, strategies=["coupled", "local_chunk"])
    assert len(calls) == 1  # the statistics pass only: no strategy asked for entropies
    calls.clear()
    tr = ri.trace_from_model(model, tok, prompt_ids, completion_ids, strategies=["coupled", entropy_strategy])
    assert len(calls) == 2  # statistics pass + entropy pass, because the strategy declared "entropies"
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + completion_ids])).logits[0, P - 1 : P + T - 1], -1)
    ent = -(logp.exp() * logp).sum(-1)
    assert tr.gammas[entropy_strategy] == pytest.approx((1 + ent / ent.max()).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match=f"{entropy_strategy}.*needs the policy's per-token entropies"):
        five_token_trace(strategies=[entropy_strategy])


def test_model_inputs_reach_every_forward(monkeypatch, model_trace, entropy_strategy):
    from rlattn.tiny import tiny_model

    model, tok = tiny_model("llama", num_layers=3, seed=0)
    calls = _forward_spy(monkeypatch, model, "pixel_values")
    _, prompt_ids, completion_ids = model_trace
    pixels = torch.zeros(1, 3, 4, 4)
    tr = ri.trace_from_model(model, tok, prompt_ids, completion_ids, strategies=[entropy_strategy], pixel_values=pixels)
    assert len(calls) == 2 and all(c.get("pixel_values") is pixels for c in calls)  # statistics pass and entropy pass
    assert tr.waad == model_trace[0].waad  # the stand-in input was dropped before the real forward


def test_table_rows_and_pandas():
    tr = five_token_trace(strategies=["coupled", "local_chunk"], meta={"model": "m"})
    table = ri.inspect_table([tr, tr])
    assert len(table) == 10
    assert table.columns == [
        "trace", "label", "model", "index", "token", "token_id", "waad", "delta", "fai",
        "gamma_coupled", "gamma_local_chunk", "preplan", "anchor", "dominated", "intro", "intro_of", "anchors_of",
    ]
    row = table[4]
    assert (row["token"], row["gamma_coupled"], row["dominated"], row["intro_of"], row["model"]) == (" add", 1.25, True, 2, "m")
    assert table[2]["anchors_of"] == [4] and table[7]["trace"] == 1
    assert table.column("preplan")[:5] == [True, False, True, False, False]
    with pytest.raises(KeyError, match="no column 'gamma_random'"):
        table.column("gamma_random")
    pd = pytest.importorskip("pandas")
    df = table.to_pandas()
    assert isinstance(df, pd.DataFrame) and df.shape == (10, 17)
    assert df["gamma_coupled"].sum() == pytest.approx(2 * (1 + 1.5 + 1.25 + 1 + 1.25))


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
def test_html_valid_self_contained_and_matches_trace(model_trace):
    tr = model_trace[0]
    page = ri.render_html(tr, strategies=["coupled", "local_chunk"], signal="fai")
    p = parse_page(page)
    assert_self_contained(page, p)
    data = page_data(p)
    assert data["signal"] == "fai"
    assert data["panels"] == [{"trace": 0, "strategy": "coupled"}, {"trace": 0, "strategy": "local_chunk"}]
    (d,) = data["traces"]
    assert d["tokens"] == tr.tokens and d["ids"] == tr.token_ids and len(d["waad"]) == len(tr)
    for key in ri.FLAG_KEYS:
        assert d["flags"][key] == [t for t, f in enumerate(tr.flags[key]) if f], key
    assert d["links"] == [list(l) for l in tr.links]
    assert d["gammas"]["coupled"] == pytest.approx(tr.gammas["coupled"], rel=1e-3)
    assert [v is None for v in d["fai"]] == [math.isnan(v) for v in tr.fai]
    assert d["waad"] == pytest.approx(tr.waad, rel=1e-3)
    # header: model, strategies, config
    assert "tiny-llama" in page and "coupled, local_chunk" in page and "quantile=0.4" in page and "window=10" in page
    assert '<option value="fai" selected>' in page


def test_page_assets_are_package_data():
    from importlib import resources
    from string import Template

    from rlattn.inspector.page import ASSETS, asset

    folder = resources.files("rlattn.inspector") / "assets"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ASSETS)
    page = ri.render_html(five_token_trace())
    for name in ("inspector.css", "inspector.js"):
        assert asset(name) == (folder / name).read_text(encoding="utf-8") and asset(name) in page  # inlined as is
    assert set(Template(asset("page.html")).get_identifiers()) == {
        "title", "css", "columns", "header", "options", "plots", "data", "js"}
    with pytest.raises(ValueError, match="no inspector asset 'x.css'"):
        asset("x.css")


def test_html_keeps_hostile_tokens_as_data():
    evil = "</script><img src=x onerror=alert(1)><!--"
    tr = ri.build_trace([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], token_ids=[1, 2, 3], tokens=["a", evil, "&amp;"],
                        label="<b>label</b>", prompt="</pre><i>")
    page = ri.render_html(tr, title="t<i>")
    p = parse_page(page)
    assert p.counts.get("img", 0) == 0 and p.counts.get("b", 0) == 0 and p.counts.get("i", 0) == 0
    assert p.counts["script"] == 2
    assert page_data(p)["traces"][0]["tokens"] == ["a", evil, "&amp;"]


def test_side_by_side_traces_and_strategies():
    a = five_token_trace(strategies=["coupled", "local_chunk"], label="A")
    b = five_token_trace(strategies=["coupled", "local_chunk"], label="B")
    data = page_data(parse_page(ri.render_html([a, b])))
    assert [(x["trace"], x["strategy"]) for x in data["panels"]] == [(0, "coupled"), (0, "local_chunk"), (1, "coupled"), (1, "local_chunk")]
    assert [t["label"] for t in data["traces"]] == ["A", "B"]


def test_render_errors():
    tr = five_token_trace(strategies=["coupled"])
    with pytest.raises(ValueError, match="signal='entropy' is invalid; allowed: gamma, waad, delta, fai"):
        ri.render_html(tr, signal="entropy")
    with pytest.raises(ValueError, match="strategy 'random' is not computed for trace 'trace'; it has: coupled"):
        ri.render_html(tr, strategies=["random"])
    with pytest.raises(ValueError, match="no traces"):
        ri.render_html([])


# ---------------------------------------------------------------------------------------------
# rollout records
# ---------------------------------------------------------------------------------------------
def _record(**over):
    # the embedded SmolLM2 tokenizer's ids and tokens of " the\nnaïve<|im_end|>"
    rec = {
        "step": 7, "prompt": json.dumps([{"role": "user", "content": "What is 2+2?"}]),
        "completion": " the\nnaïve<|im_end|>", "completion_ids": [260, 198, 3546, 46494, 2],
        "tokens": ["Ġthe", "Ċ", "na", "Ã¯ve", "<|im_end|>"],
        "rewards": {"accuracy": 1.0}, "advantage": 0.5,
        "gamma": [2.0, 2.0, 2.0, 2.0, 2.0],  # deliberately not what any strategy computes
        "waad": [1.0, 4.0, 4.0, 2.0, 2.0], "fai": [0.1, 0.5, None, 0.3, 0.9],
        "preplan": [True, False, True, False, False], "anchor": [False, True, False, False, True],
        "strategy": "coupled",
    }
    rec.update(over)
    return rec


def test_records_render_without_model(tmp_path):
    from rlattn.rollouts.records import append_records

    path = tmp_path / "rollouts.jsonl"
    append_records(path, [_record(), _record(step=8, preplan=[False] * 5)])
    (tr,) = ri.load_record_traces(path, [0], strategies=["coupled", "global_anchor"])  # the default model's tokenizer
    assert tr.tokens == [" the", "\n", "na", "ïve", "<|im_end|>"]
    assert tr.gammas["coupled"] == [2.0] * 5  # the recorded γ, not a recomputation
    assert tr.gammas["global_anchor"] == [1.0, 1.5, 1.0, 1.0, 1.5]  # recomputed from stored WAAD/FAI
    assert tr.flags["dominated"] == [False, False, False, False, True] and tr.links == [(2, 4)]
    assert tr.prompt == "[user] What is 2+2?" and tr.meta["step"] == 7 and tr.meta["rewards"] == {"accuracy": 1.0}
    assert "note" not in tr.meta and tr.head_span is None
    (other,) = ri.load_record_traces(path, [1])
    assert other.strategies == ["coupled"] and "recorded preplan flags differ" in other.meta["note"]
    with pytest.raises(ValueError, match="record index 2 is out of range: .* holds 2 records"):
        ri.load_record_traces(path, [2])
    with pytest.raises(ValueError, match="high_entropy.*rollout records do not store them"):
        ri.load_record_traces(path, [0], strategies=["high_entropy"])
    with pytest.raises(ValueError, match="rollout record has no 'waad'"):
        ri.trace_from_record(_record(waad=None))
    with pytest.raises(ValueError, match="has no head spans"):
        ri.plot_head_spans(tr, tmp_path / "h.png")


def test_record_text_is_decoded_by_the_tokenizer_with_multibyte_characters_whole(smollm_tokenizer):
    tok = smollm_tokenizer
    # " 日本": SmolLM2 splits 日 over three byte-level tokens; each piece alone decodes to U+FFFD
    ids = tok.encode(" 日本<|im_end|>", add_special_tokens=False)
    assert ids == [17097, 241, 115, 40993, 2]
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)
    rec = _record(completion_ids=ids, tokens=tok.convert_ids_to_tokens(ids), completion=" 日本<|im_end|>")
    tr = ri.trace_from_record(rec, tokenizer=tok)
    assert tr.tokens == [" ", "", "日", "本", "<|im_end|>"]  # the token that completes 日 shows it
    assert "".join(tr.tokens) == tok.decode(ids)
    # a record from another model's tokenizer fails, naming the fix
    with pytest.raises(ValueError, match="first difference at token 2: .*pass the run's model with --model"):
        ri.trace_from_record(_record(tokens=["Ġthe", "Ċ", "caf", "Ã©", "<|im_end|>"]), tokenizer=tok)


def test_token_texts_on_byte_and_sentencepiece_tokenizers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlattn.inspector.text import token_texts
    from rlattn.tiny import byte_tokenizer

    bytes_tok = byte_tokenizer()  # one token per UTF-8 byte
    ids = bytes_tok.encode("é 日", add_special_tokens=False)
    assert token_texts(bytes_tok, ids) == ["", "é", " ", "", "", "日"]
    # SentencePiece marks a word's space on its token (▁); decoded alone, a token loses it
    core = Tokenizer(models.BPE(vocab={"<unk>": 0, "▁the": 1, "▁cat": 2, ".": 3}, merges=[], unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    sp = PreTrainedTokenizerFast(tokenizer_object=core)
    assert token_texts(sp, [1, 2, 3]) == ["the", " cat", "."] and sp.decode([1, 2, 3]) == "the cat."


# ---------------------------------------------------------------------------------------------
# PNGs
# ---------------------------------------------------------------------------------------------
def _png_pixels(path: Path):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def test_pngs_written(tmp_path, model_trace):
    tr = model_trace[0]
    sig = _png_pixels(ri.plot_signals(tr, tmp_path / "sig.png"))
    heads = _png_pixels(ri.plot_head_spans(tr, tmp_path / "heads.png"))
    for img in (sig, heads):
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert float(img[..., :3].std()) > 0.05  # not blank
    out = ri.write_report([tr], tmp_path / "rep")
    assert [p.name for p in out["pngs"]] == ["trace0_signals.png", "trace0_heads.png"]
    page = out["html"].read_text(encoding="utf-8")
    p = parse_page(page)
    assert_self_contained(page, p)
    assert page.count('src="data:image/png;base64,') == 2


# ---------------------------------------------------------------------------------------------
# long traces
# ---------------------------------------------------------------------------------------------
def synthetic_trace(T: int, seed: int = 0) -> ri.Trace:
    rng = random.Random(seed)
    words = ["the", " total", " distance", " is", " 60", " meters", ",", " so", "\n", " we", " multiply", " by", " 3", "."]
    waad = [rng.uniform(3.0, 9.0) for _ in range(T)]
    fai = [rng.uniform(0.0, 0.02) for _ in range(T - 10)] + [None] * 10
    return ri.build_trace(waad, fai, token_ids=[rng.randrange(49152) for _ in range(T)],
                          tokens=[rng.choice(words) for _ in range(T)], strategies=["coupled", "local_chunk"],
                          label="synthetic 8K", meta={"model": "synthetic"})


def test_long_trace_stays_under_size_bound(tmp_path):
    tr = synthetic_trace(8192)
    out = ri.write_report([tr], tmp_path, strategies=["coupled", "local_chunk"])  # both panels, signal plot embedded
    size = out["html"].stat().st_size
    assert size < LONG_TRACE_MAX_BYTES, f"8K-token page is {size} bytes"
    data = page_data(parse_page(out["html"].read_text(encoding="utf-8")))
    assert len(data["traces"][0]["tokens"]) == 8192 and data["batch"] <= 1000  # rendered in batches


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def test_cli_takes_credit_and_attention_settings_from_attn_credit_config():
    from rlattn.config import AttnCreditConfig
    from rlattn.inspector.cli import parse_inspect_args

    args, config = parse_inspect_args(["--records", "r.jsonl", "--credit_quantile", "0.3", "--attn_window", "4"])
    assert isinstance(config, AttnCreditConfig) and args.records == "r.jsonl"
    credit, stats = config.credit_config(), config.attention_stats_config()
    assert credit.quantile == 0.3 and stats.window == 4
    assert (credit.gamma, stats.num_layers) == (AttnCreditConfig.credit_gamma, AttnCreditConfig.attn_num_layers)  # defaults: the dataclass's
    _, config = parse_inspect_args(["--records", "r.jsonl", "--credit-quantile", "0.25", "--attn-window", "6"])
    assert (config.credit_quantile, config.attn_window) == (0.25, 6)


def test_cli_repeated_flags_and_yaml_recipe(tmp_path, capsys):
    from rlattn.inspector.cli import parse_inspect_args

    a, _ = parse_inspect_args(["--dataset", "gsm8k_test", "--index", "3", "--index", "5", "--strategy", "coupled", "--strategy", "local_chunk"])
    b, _ = parse_inspect_args(["--dataset", "gsm8k_test", "--index", "3", "5", "--strategy=coupled", "--strategy", "local_chunk"])
    assert a.index == b.index == [3, 5] and a.strategy == b.strategy == ["coupled", "local_chunk"]
    a, _ = parse_inspect_args(["--records", "r.jsonl", "--record-index", "0", "--record-index", "12", "--no-plots", "--no-chat-template"])
    assert a.record_index == [0, 12] and (a.plots, a.chat_template, a.embed_plots) == (False, False, True)
    recipe = tmp_path / "inspect.yaml"
    recipe.write_text("records: r.jsonl\nstrategy: [local_chunk]\ncredit_quantile: 0.3\nattn_window: 6\n")
    a, config = parse_inspect_args([str(recipe), "--attn_window", "4"])  # the command line overrides the recipe
    assert (a.records, a.strategy, config.credit_quantile, config.attn_window) == ("r.jsonl", ["local_chunk"], 0.3, 4)
    recipe.write_text("records: r.jsonl\ncredit_quantil: 0.3\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_inspect_args([str(recipe)])
    assert exit_info.value.code == 2 and "credit_quantil" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_inspect_args(["--records", "r.jsonl", "--credit_quantile", "2"])
    assert "credit_quantile" in capsys.readouterr().err


def test_cli_run_uses_the_parsed_settings(tmp_path, tiny_dir):
    from rlattn.inspector.cli import parse_inspect_args, run_inspect

    args, config = parse_inspect_args(["--model", str(tiny_dir), "--prompt", "Add 2 and 3.", "--max-new-tokens", "8",
                                       "--credit_quantile", "0.3", "--attn_window", "4", "--out", str(tmp_path), "--no-plots"])
    written = run_inspect(args, config)
    assert written["pngs"] == []
    page = written["html"].read_text(encoding="utf-8")
    assert "quantile=0.3" in page and "window=4" in page
    assert [p["strategy"] for p in page_data(parse_page(page))["panels"]] == ["coupled"]  # credit_strategy's default


# ---------------------------------------------------------------------------------------------
# the script
# ---------------------------------------------------------------------------------------------
def _run(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_script_help_and_imports_are_not_shadowed():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "--records" in r.stdout and "--strategy" in r.stdout
    r = _run("--prompt", "x", "--records", "y.jsonl")
    assert r.returncode == 2 and "give exactly one trace source" in r.stderr
    # past argparse: importing torch & co. must reach the stdlib inspect, not this script
    r = _run("--records", "missing/rollouts.jsonl")
    assert r.returncode == 1 and "has no attribute" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == "scripts/inspect_credit.py: error: no rollout records at missing/rollouts.jsonl"


def test_script_end_to_end_prompt_and_records(tmp_path, tiny_dir):
    from rlattn.rollouts.records import append_records

    r = _run("--model", str(tiny_dir), "--prompt", "Add 2 and 3.", "--max-new-tokens", "16",
             "--strategy", "coupled", "--strategy", "local_chunk", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / "a" / "inspector.html").read_text(encoding="utf-8")
    data = page_data(parse_page(page))
    assert [p["strategy"] for p in data["panels"]] == ["coupled", "local_chunk"]
    assert 1 <= len(data["traces"][0]["tokens"]) <= 16
    assert (tmp_path / "a" / "trace0_signals.png").is_file() and (tmp_path / "a" / "trace0_heads.png").is_file()

    append_records(tmp_path / "rollouts.jsonl", [_record(), _record(step=9)])
    r = _run("--records", str(tmp_path / "rollouts.jsonl"), "--record-index", "0", "--record-index", "1",
             "--out", str(tmp_path / "b"), "--signal", "waad")
    assert r.returncode == 0, r.stderr[-3000:]
    data = page_data(parse_page((tmp_path / "b" / "inspector.html").read_text(encoding="utf-8")))
    assert [t["label"] for t in data["traces"]] == ["record 0", "record 1"] and data["signal"] == "waad"
    assert sorted(p.name for p in (tmp_path / "b").glob("*.png")) == ["trace0_signals.png", "trace1_signals.png"]
