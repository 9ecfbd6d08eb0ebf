"""rlattn.data.load_dataset: bundled sets, templates, local files, and the errors for bad input."""

from __future__ import annotations

import gzip
import json
from importlib import resources

import datasets as hf_datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlattn.data import (
    BUNDLED_DATASETS,
    PROMPT_TEMPLATES,
    SYSTEM_PROMPT,
    get_template,
    known_dataset_names,
    load_dataset,
    register_template,
)
from rlattn.data.bundled import gzip_jsonl, open_bundled, sha256_of_bundled

PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Written out by hand (not read from BUNDLED_DATASETS) so the registry itself is checked too.
EXPECTED_ROWS = {
    "gsm8k_train": 7473,
    "gsm8k_test": 1319,
    "math_train": 7498,
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "minerva_math": 272,
    "olympiadbench": 675,
    "arith_smollm2_train": 69,
}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- bundled sets -----------------------------------------------------------------------------


def test_registry_lists_every_shipped_math_set_with_its_row_count():
    shipped = {name: d.rows for name, d in BUNDLED_DATASETS.items() if d.file is not None}
    assert shipped == EXPECTED_ROWS


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_bundled_set_loads_with_documented_rows_and_columns(name):
    ds = load_dataset(name)
    assert isinstance(ds, hf_datasets.Dataset)
    assert ds.num_rows == EXPECTED_ROWS[name]
    assert ds.column_names[:4] == ["id", "prompt", "problem", "solution"]
    assert len(set(ds["id"])) == ds.num_rows
    assert all(isinstance(s, str) and s.strip() for s in ds["solution"])
    first = ds[0]
    assert first["prompt"] == [
        {"role": "system", "content": PAPER_SYSTEM_PROMPT},
        {"role": "user", "content": first["problem"]},
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_shipped_file_decompresses_to_the_documented_sha256(name):
    assert sha256_of_bundled(name) == BUNDLED_DATASETS[name].sha256


def test_shipped_files_and_readme_are_package_data():
    root = resources.files("rlattn.data").joinpath("math")
    for name in EXPECTED_ROWS:
        assert root.joinpath(f"{name}.jsonl.gz").is_file()
    readme = root.joinpath("README.md").read_text(encoding="utf-8")
    for name, info in BUNDLED_DATASETS.items():
        if info.file:
            assert info.sha256 in readme and f"`{name}.jsonl.gz`" in readme


def test_solution_column_is_the_answer_field_and_rationale_is_kept_aside():
    with open_bundled("gsm8k_test") as fh:
        source = json.loads(fh.readline())
    row = load_dataset("gsm8k_test")[0]
    assert row["id"] == source["id"]
    assert row["solution"] == source["answer"]
    assert row["reference_solution"] == source["solution"]
    assert "answer" not in row


def test_math_sets_keep_level_and_type_and_filter_by_level():
    ds = load_dataset("math500")
    assert {"level", "type"} <= set(ds.column_names)
    hard = load_dataset("math_train", levels=(3, 4, 5))
    assert hard.num_rows == 5584  # "MATH level 3-5 train" in the data README
    assert set(hard["level"]) == {3, 4, 5}


def test_family_plus_split_is_the_flat_name():
    assert load_dataset("gsm8k", split="test")["id"] == load_dataset("gsm8k_test")["id"]
    assert load_dataset("math", split="train", limit=3)["id"] == load_dataset(
        "math_train", limit=3
    )["id"]
    # a flat name with its own split, and a single-split family without one
    assert load_dataset("gsm8k_train", split="train", limit=2).num_rows == 2
    assert load_dataset("aime24", split="test").num_rows == 30


def test_limit_and_seed():
    base = load_dataset("gsm8k_test")
    assert load_dataset("gsm8k_test", limit=5)["id"] == base["id"][:5]
    a = load_dataset("gsm8k_test", limit=20, seed=1)["id"]
    assert a == load_dataset("gsm8k_test", limit=20, seed=1)["id"]
    assert a != load_dataset("gsm8k_test", limit=20, seed=2)["id"]
    assert a != base["id"][:20]
    assert sorted(load_dataset("gsm8k_test", seed=1)["id"]) == sorted(base["id"])


# --- templates ---------------------------------------------------------------------------------


def test_template_registry_and_system_prompt():
    assert SYSTEM_PROMPT == PAPER_SYSTEM_PROMPT
    assert {"chat", "plain", "r1"} <= set(PROMPT_TEMPLATES)


def test_plain_template_is_a_string_prompt_for_base_models():
    row = load_dataset("aime24", template="plain", limit=1)[0]
    assert row["prompt"] == f"{PAPER_SYSTEM_PROMPT}\n\nQuestion: {row['problem']}\nAnswer:"


def test_r1_template_asks_for_think_and_answer_tags():
    row = load_dataset("aime24", template="r1", limit=1)[0]
    system, user = row["prompt"]
    assert system["role"] == "system" and "<think>" in system["content"]
    assert "<answer>" in system["content"] and "\\boxed{}" in system["content"]
    assert user == {"role": "user", "content": row["problem"]}


def test_callable_and_dotted_path_templates():
    ds = load_dataset("amc23", template=lambda p: [{"role": "user", "content": p.upper()}],
                      limit=1)
    assert ds[0]["prompt"][0]["content"] == ds[0]["problem"].upper()
    assert get_template("rlattn.data.templates:plain_template") is PROMPT_TEMPLATES["plain"]


def test_register_template_rejects_a_taken_name():
    with pytest.raises(ValueError, match="'chat' is already registered"):
        register_template("chat")(lambda p: p)


# --- local files -------------------------------------------------------------------------------


def test_local_jsonl_with_question_field_and_numeric_answers(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "What is 2 + 3?", "answer": 5, "level": 1},
        {"question": "What is 10 / 4?", "answer": 2.5, "level": 2},
        {"question": "What is 3 * 9?", "answer": 27.0, "level": 2},
    ])
    ds = load_dataset(path)
    assert ds.num_rows == 3
    assert ds["solution"] == ["5", "2.5", "27"]
    assert ds["id"] == ["0", "1", "2"]
    assert ds["level"] == [1, 2, 2]
    assert ds[0]["prompt"][1] == {"role": "user", "content": "What is 2 + 3?"}
    assert load_dataset(str(path), split="train", levels=[2]).num_rows == 2


def test_local_jsonl_gz_and_json_array(tmp_path):
    rows = [{"id": f"r{i}", "problem": f"p{i}", "answer": str(i)} for i in range(4)]
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    assert load_dataset(gz)["id"] == ["r0", "r1", "r2", "r3"]
    js = tmp_path / "rows.json"
    js.write_text(json.dumps(rows), encoding="utf-8")
    assert load_dataset(js, template="plain")["solution"] == ["0", "1", "2", "3"]


def test_local_parquet_with_custom_field_names(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({
        "uid": ["a", "b"],
        "statement": ["Compute 1+1.", "Compute 2+2."],
        "final": ["2", "4"],
    }), path)
    ds = load_dataset(path, problem_field="statement", answer_field="final")
    assert ds["problem"] == ["Compute 1+1.", "Compute 2+2."]
    assert ds["solution"] == ["2", "4"]
    assert ds["uid"] == ["a", "b"]


def test_gzip_jsonl_is_reproducible(tmp_path):
    src = _write_jsonl(tmp_path / "x.jsonl", [{"problem": "p", "answer": "1"}] * 50)
    sha1 = gzip_jsonl(src, tmp_path / "a.jsonl.gz")
    sha2 = gzip_jsonl(src, tmp_path / "b.jsonl.gz")
    assert sha1 == sha2
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()) == src.read_bytes()


# --- errors ------------------------------------------------------------------------------------


def test_unknown_name_lists_known_ones_without_touching_the_network(monkeypatch):
    def no_hub(*args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("hub was called for a name without '/'")

    monkeypatch.setattr(hf_datasets, "load_dataset", no_hub)
    with pytest.raises(ValueError) as err:
        load_dataset("gsm8k_tset")
    msg = str(err.value)
    assert "'gsm8k_tset' is not a bundled name (did you mean 'gsm8k_test'" in msg
    assert "(known: aime24, " in msg
    for name in EXPECTED_ROWS:
        assert name in msg
    assert set(known_dataset_names()) >= set(EXPECTED_ROWS) | {"gsm8k", "math", "countdown"}


def test_hub_failure_is_wrapped(monkeypatch):
    def offline(name, config=None, split=None):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub")

    monkeypatch.setattr(hf_datasets, "load_dataset", offline)
    with pytest.raises(ValueError) as err:
        load_dataset("someorg/some-set", split="train")
    msg = str(err.value)
    assert "'someorg/some-set' is not a bundled name (known: " in msg
    assert "could not be loaded from the hub: ConnectionError: Couldn't reach" in msg


def test_hub_dataset_goes_through_the_same_field_mapping(monkeypatch):
    fake = hf_datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["1", "2"]})
    calls = []

    def hub(name, config=None, split=None):
        calls.append((name, config, split))
        return fake

    monkeypatch.setattr(hf_datasets, "load_dataset", hub)
    ds = load_dataset("someorg/some-set", hub_config="main")
    assert calls == [("someorg/some-set", "main", "train")]
    assert ds["problem"] == ["q1", "q2"] and ds["solution"] == ["1", "2"]


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="dataset file not found: .*nope.jsonl"):
        load_dataset(path)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{"problem": "q", "answer": \n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: malformed JSON"):
        load_dataset(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.jsonl, line 3: expected a JSON object, got list"):
        load_dataset(path)


def test_missing_answer_field_names_field_row_file_and_present_fields(tmp_path):
    path = _write_jsonl(tmp_path / "noans.jsonl", [
        {"problem": "p", "answer": "1"},
        {"problem": "q", "final_answer": "2"},
    ])
    with pytest.raises(ValueError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert "noans.jsonl, line 2: missing field 'answer'" in msg
    assert "fields present: final_answer, problem" in msg
    assert "answer_field=" in msg


def test_missing_problem_field(tmp_path):
    path = _write_jsonl(tmp_path / "noprob.jsonl", [{"text": "p", "answer": "1"}])
    with pytest.raises(ValueError, match=r"line 1: missing field 'problem' \(or 'question'\) "
                                         r"\(fields present: answer, text\)"):
        load_dataset(path)
    with pytest.raises(ValueError, match="missing field 'stmt'"):
        load_dataset(path, problem_field="stmt")


def test_bad_answer_values(tmp_path):
    path = _write_jsonl(tmp_path / "nullans.jsonl", [{"problem": "p", "answer": None}])
    with pytest.raises(ValueError, match="line 1: field 'answer' must be a string or a number, "
                                         "got null"):
        load_dataset(path)


def test_empty_file_and_empty_after_filtering(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl has no rows"):
        load_dataset(empty)
    with pytest.raises(ValueError, match=r"no rows left after filtering \(levels=\[9\]\)"):
        load_dataset("math500", levels=[9])
    with pytest.raises(ValueError, match="no rows left after filtering .*filter_fn="):
        load_dataset("aime24", filter_fn=lambda row: False)
    with pytest.raises(ValueError, match="levels= needs a 'level' field"):
        load_dataset("gsm8k_test", levels=[1])


def test_bad_limit_and_seed():
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_dataset("aime24", limit=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        load_dataset("aime24", seed="1")


def test_unknown_template_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        load_dataset("aime24", template="chatml")
    msg = str(err.value)
    assert "unknown prompt template 'chatml'" in msg
    assert "chat, chat_example, plain, r1" in msg


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'validation' for 'gsm8k'; available: "
                                         "'test', 'train'"):
        load_dataset("gsm8k", split="validation")
    with pytest.raises(ValueError, match="unknown split 'train' for 'aime24'; available: 'test'"):
        load_dataset("aime24", split="train")
    with pytest.raises(ValueError, match="unknown split 'test' for 'gsm8k_train'"):
        load_dataset("gsm8k_train", split="test")
    with pytest.raises(ValueError, match="'gsm8k' has several splits; pass split="):
        load_dataset("gsm8k")


def test_split_on_a_local_file(tmp_path):
    path = _write_jsonl(tmp_path / "one.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="split='test' does not apply to a local file"):
        load_dataset(path, split="test")


def test_countdown_only_arguments_are_rejected_elsewhere():
    with pytest.raises(ValueError, match="n= applies only to 'countdown', not to 'aime24'"):
        load_dataset("aime24", n=5)
    with pytest.raises(ValueError, match="max_target= applies only to 'countdown'"):
        load_dataset("aime24", max_target=50)
    with pytest.raises(TypeError, match="unexpected keyword argument.* problem_feild"):
        load_dataset("aime24", problem_feild="x")


def test_mixed_value_types_name_the_field(tmp_path):
    path = _write_jsonl(tmp_path / "mixed.jsonl", [
        {"problem": "p", "answer": "1", "meta": 3},
        {"problem": "q", "answer": "2", "meta": "three"},
    ])
    with pytest.raises(ValueError, match="field 'meta' mixes value types"):
        load_dataset(path)


def test_filtered_arith_set_is_arith_train_with_the_generators_answers():
    filtered = load_dataset("arith_smollm2_train")
    train = {r["problem"]: r["solution"] for r in load_dataset("arith_train")}
    held_out = set(load_dataset("arith_test")["problem"])
    assert all(train.get(r["problem"]) == r["solution"] for r in filtered)  # a train problem, its own answer
    assert not held_out & set(filtered["problem"])
    assert all(0 < r["pass_rate"] < 1 and r["num_samples"] == 8 for r in filtered)
