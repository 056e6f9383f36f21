"""normalize(): raw field text -> canonical values or an error code, row for row."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch_toggle.errors import UsageError
from batch_toggle.input.normalize import FALSE_WORDS, OUTPUT_COLUMNS, TRUE_WORDS, normalize
from batch_toggle.vocab import ERROR_CODES, FIELDS

JOB = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
KEY = "1e2feb89-414c-443c-9027-c4d1c386bbc4"


def table(rows: list[dict[str, str | None]]) -> pa.Table:
    return pa.table({f: pa.array([r.get(f) for r in rows], pa.string()) for f in FIELDS})


def row(**overrides: str | None) -> dict[str, str | None]:
    base: dict[str, str | None] = {
        "job_id": JOB, "review_key": KEY, "do_notify_sms": "true", "update_target": "job",
    }
    base.update(overrides)
    return base


def one(**kwargs: object) -> dict[str, object]:
    """Normalise a single row built from `row(**kwargs)`."""
    options = {k: kwargs.pop(k) for k in ("set_state", "default_target") if k in kwargs}
    return normalize(table([row(**kwargs)]), **options).to_pylist()[0]  # type: ignore[arg-type]


# --- shape -----------------------------------------------------------------------------------


def test_output_has_exactly_the_promised_columns_and_types() -> None:
    out = normalize(table([row()]))
    assert tuple(out.column_names) == OUTPUT_COLUMNS
    assert out.schema.field("do_notify_sms").type == pa.bool_()
    for name in ("job_id", "review_key", "update_target", "error_code", "error_message",
                 "review_key_tail"):
        assert out.schema.field(name).type == pa.string()


def test_a_clean_row_is_valid_with_no_error() -> None:
    assert one() == {
        "job_id": JOB, "review_key": KEY, "do_notify_sms": True, "update_target": "job",
        "error_code": None, "error_message": None, "review_key_tail": KEY[-4:],
    }


def test_empty_table_gives_empty_result() -> None:
    out = normalize(table([]))
    assert out.num_rows == 0
    assert tuple(out.column_names) == OUTPUT_COLUMNS


def test_absent_field_columns_count_as_missing() -> None:
    out = normalize(pa.table({"job_id": [JOB]})).to_pylist()[0]
    assert out["error_code"] == "missing_review_key"
    assert "do_notify_sms is missing" in out["error_message"]


def test_multi_chunk_and_sliced_input_is_handled() -> None:
    good = table([row()] * 3)
    messy = table([row(job_id=JOB.upper()), row(job_id="nope")])
    combined = pa.concat_tables([good, messy, good]).slice(1)
    out = normalize(combined).to_pylist()
    assert len(out) == 7
    assert [r["job_id"] for r in out] == [JOB, JOB, JOB, None, JOB, JOB, JOB]
    assert out[3]["error_code"] == "invalid_job_id"


def test_sliced_clean_chunks_are_checked_at_their_own_offset() -> None:
    # The fast byte check reads the buffers directly: a slice must not look at the wrong bytes.
    column = pa.array(["not-a-uuid-but-exactly-36-chars-long", JOB, JOB], pa.string())
    sliced = pa.table({"job_id": column.slice(1), "review_key": [KEY, KEY],
                       "do_notify_sms": ["1", "0"], "update_target": ["job", "job"]})
    assert normalize(sliced).column("job_id").to_pylist() == [JOB, JOB]
    bad_after_good = pa.array([JOB, "not-a-uuid-but-exactly-36-chars-long"]).slice(1)
    fields = pa.table({"job_id": bad_after_good, "review_key": [KEY],
                       "do_notify_sms": ["1"], "update_target": ["job"]})
    assert normalize(fields).column("error_code").to_pylist() == ["invalid_job_id"]


def test_a_few_bad_rows_in_a_long_clean_column() -> None:
    # Clean pieces are kept as they are, messy ones rewritten: the result must line up.
    n = 70_000
    job_ids = pa.chunked_array([pa.repeat(pa.scalar(JOB), n)])
    messy = pa.chunked_array([job_ids.chunk(0).slice(0, n - 2), pa.array([JOB.upper(), "x"])])
    fields = pa.table({"job_id": messy, "review_key": pa.repeat(pa.scalar(KEY), n),
                       "do_notify_sms": pa.repeat(pa.scalar("1"), n),
                       "update_target": pa.repeat(pa.scalar("job"), n)})
    out = normalize(fields)
    assert out.num_rows == n
    assert out.column("job_id").null_count == 1
    assert out.column("job_id")[n - 2].as_py() == JOB
    codes = out.column("error_code")
    assert codes.null_count == n - 1 and codes[n - 1].as_py() == "invalid_job_id"


# --- UUIDs ----------------------------------------------------------------------------------

SPELLINGS = [
    pytest.param(JOB, id="canonical"),
    pytest.param(JOB.upper(), id="upper"),
    pytest.param("Cd613E30-D8f1-4ADF-91b7-584A2265B1F5", id="mixed-case"),
    pytest.param("{" + JOB + "}", id="braces"),
    pytest.param("urn:uuid:" + JOB, id="urn"),
    pytest.param("URN:UUID:" + JOB.upper(), id="urn-upper"),
    pytest.param(JOB.replace("-", ""), id="32-hex"),
    pytest.param(JOB.replace("-", "").upper(), id="32-hex-upper"),
    pytest.param("{" + JOB.replace("-", "") + "}", id="braces-32-hex"),
    pytest.param("urn:uuid:{" + JOB + "}", id="urn-braces"),
    pytest.param(f"  {JOB}\t", id="spaces-tab"),
    pytest.param(f"{JOB}\r", id="trailing-cr"),
    pytest.param(f"\u00a0{JOB}\u00a0", id="nbsp"),
    pytest.param(f"\ufeff{JOB}\u200b", id="bom-zero-width"),
    pytest.param(f"\u3000{JOB}\n", id="ideographic-space"),
]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("field", ["job_id", "review_key"])
def test_every_uuid_spelling_becomes_canonical(field: str, spelling: str) -> None:
    out = one(**{field: spelling})
    assert out[field] == JOB
    assert out["error_code"] is None


FULL_WIDTH_ONE = "\uff11"

NOT_UUIDS = [
    pytest.param(FULL_WIDTH_ONE + JOB[1:], id="full-width-digit"),
    pytest.param(JOB[:-1] + "\uff21", id="full-width-letter"),
    pytest.param("{" + JOB, id="open-brace-only"),
    pytest.param(JOB + "}", id="close-brace-only"),
    pytest.param("{{" + JOB + "}}", id="double-braces"),
    pytest.param(JOB.replace("-", "", 1), id="some-hyphens"),
    pytest.param(JOB.replace("-", "")[:-1], id="31-hex"),
    pytest.param(JOB.replace("-", "") + "0", id="33-hex"),
    pytest.param(JOB[:-1] + "g", id="non-hex"),
    pytest.param(JOB.replace("-", " "), id="spaces-for-hyphens"),
    pytest.param("uuid:" + JOB, id="uuid-prefix"),
    pytest.param("{urn:uuid:" + JOB + "}", id="urn-inside-braces"),
    pytest.param(JOB + JOB, id="two-uuids"),
    pytest.param("abc", id="short"),
    pytest.param("NA", id="NA"),
    pytest.param(f"{JOB[:8]}\n{JOB[9:]}", id="newline-inside"),
]


@pytest.mark.parametrize("value", NOT_UUIDS)
def test_a_job_id_that_is_not_a_uuid_is_invalid(value: str) -> None:
    out = one(job_id=value)
    assert out["job_id"] is None
    assert out["error_code"] == "invalid_job_id"
    assert "is not a UUID" in out["error_message"]


@pytest.mark.parametrize("value", NOT_UUIDS)
def test_a_review_key_that_is_not_a_uuid_is_invalid(value: str) -> None:
    out = one(review_key=value)
    assert out["review_key"] is None
    assert out["error_code"] == "invalid_review_key"


@pytest.mark.parametrize("value", [None, "", "   ", "\u00a0", "\r\n", "\t\u200b"])
@pytest.mark.parametrize("field", FIELDS)
def test_null_or_blank_is_missing(field: str, value: str | None) -> None:
    out = one(**{field: value})
    assert out[field] is None
    assert out["error_code"] == f"missing_{field}"
    assert f"{field} is missing" in out["error_message"]


# --- states and targets -----------------------------------------------------------------------

SPEC_TRUE = ["true", "t", "yes", "y", "1", "on", "opt-in", "optin", "subscribe"]
SPEC_FALSE = ["false", "f", "no", "n", "0", "off", "opt-out", "optout", "unsubscribe"]


def test_every_spec_state_word_is_accepted() -> None:
    assert set(SPEC_TRUE) <= set(TRUE_WORDS)
    assert set(SPEC_FALSE) <= set(FALSE_WORDS)
    assert not set(TRUE_WORDS) & set(FALSE_WORDS)


@pytest.mark.parametrize("word", TRUE_WORDS)
def test_true_words(word: str) -> None:
    for spelling in (word, word.upper(), word.title(), f" {word}\r"):
        assert one(do_notify_sms=spelling)["do_notify_sms"] is True, spelling


@pytest.mark.parametrize("word", FALSE_WORDS)
def test_false_words(word: str) -> None:
    for spelling in (word, word.upper(), word.title(), f"\t{word} "):
        assert one(do_notify_sms=spelling)["do_notify_sms"] is False, spelling


@pytest.mark.parametrize("word", ["maybe", "2", "tru", "yes please", "1.0", "-1", "stop", "ｙｅｓ"])
def test_unknown_state_word_is_invalid(word: str) -> None:
    out = one(do_notify_sms=word)
    assert out["do_notify_sms"] is None
    assert out["error_code"] == "invalid_do_notify_sms"
    assert f"do_notify_sms '{word}' is not" in out["error_message"]


def test_native_booleans_are_accepted() -> None:
    fields = table([row(), row()]).set_column(
        2, "do_notify_sms", pa.array([True, False], pa.bool_())
    )
    assert normalize(fields).column("do_notify_sms").to_pylist() == [True, False]


@pytest.mark.parametrize(("value", "expected"), [
    ("job", "job"), ("client", "client"), (" JOB ", "job"), ("Client\r", "client"),
    ("\u00a0cLiEnT", "client"),
])
def test_targets(value: str, expected: str) -> None:
    assert one(update_target=value)["update_target"] == expected


@pytest.mark.parametrize("value", ["all", "jobs", "both", "j", "customer", "job client"])
def test_unknown_target_is_invalid(value: str) -> None:
    out = one(update_target=value)
    assert out["update_target"] is None
    assert out["error_code"] == "invalid_update_target"
    assert f"update_target '{value}' is not job or client" in out["error_message"]


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [True, False])
def test_set_state_overrides_every_row(state: bool) -> None:
    rows = [row(do_notify_sms="true"), row(do_notify_sms="false"), row(do_notify_sms=None),
            row(do_notify_sms="garbage")]
    out = normalize(table(rows), set_state=state)
    assert out.column("do_notify_sms").to_pylist() == [state] * 4
    assert out.column("error_code").to_pylist() == [None] * 4


def test_default_target_fills_only_blank_targets() -> None:
    rows = [row(update_target=None), row(update_target="  "), row(update_target="job"),
            row(update_target="all")]
    out = normalize(table(rows), default_target="client")
    assert out.column("update_target").to_pylist() == ["client", "client", "job", None]
    assert out.column("error_code").to_pylist() == [None, None, None, "invalid_update_target"]


def test_default_target_is_itself_checked() -> None:
    assert one(update_target="", default_target=" JOB ")["update_target"] == "job"
    with pytest.raises(UsageError):
        normalize(table([row()]), default_target="everything")


def test_set_state_must_be_a_bool() -> None:
    with pytest.raises(UsageError):
        normalize(table([row()]), set_state="yes")  # type: ignore[arg-type]


# --- errors ---------------------------------------------------------------------------------

LOCAL_CODES = [c for c in ERROR_CODES if c.startswith(("missing_", "invalid_"))]


def test_every_local_error_code_is_produced() -> None:
    rows = []
    for code in LOCAL_CODES:
        kind, field = code.split("_", 1)
        rows.append(row(**{field: None if kind == "missing" else "bogus"}))
    out = normalize(table(rows))
    assert out.column("error_code").to_pylist() == LOCAL_CODES


def test_error_code_is_the_first_bad_field_and_message_lists_all() -> None:
    out = one(job_id="abc", review_key=None, do_notify_sms="maybe", update_target="all")
    assert out["error_code"] == "invalid_job_id"
    assert out["error_message"] == (
        "job_id 'abc' is not a UUID; review_key is missing; "
        "do_notify_sms 'maybe' is not true/false, yes/no, 1/0, on/off, opt-in/opt-out or "
        "subscribe/unsubscribe; update_target 'all' is not job or client"
    )
    assert (out["job_id"], out["review_key"], out["do_notify_sms"], out["update_target"]) == (
        None, None, None, None)


def test_later_fields_are_still_normalised_when_an_earlier_one_is_bad() -> None:
    out = one(job_id="abc", do_notify_sms="NO", update_target="Client")
    assert (out["review_key"], out["do_notify_sms"], out["update_target"]) == (
        KEY, False, "client")


def test_quoted_values_are_one_line_and_cut() -> None:
    out = one(job_id="a\nb\tc" + "x" * 100)
    message = out["error_message"]
    assert "\n" not in message and "\t" not in message
    assert len(message) < 80
    assert "…" in message


# --- the review key is a secret ------------------------------------------------------------


def test_invalid_key_message_shows_only_the_last_four_characters() -> None:
    near_miss = KEY[:-1] + "z"  # one character off: still almost the whole secret
    out = one(review_key=near_miss)
    assert out["error_message"] == "review_key is not a UUID (ends '…bbcz')"
    assert KEY[:-4] not in out["error_message"]
    assert out["review_key_tail"] == "bbcz"


def test_key_in_another_column_is_masked_too() -> None:
    # A shifted row can put the key where the state or the job_id belongs.
    for field in ("do_notify_sms", "update_target"):
        out = one(**{field: KEY})
        assert KEY not in out["error_message"]
        assert KEY[:13] not in out["error_message"]
        assert f"'…{KEY[-4:]}'" in out["error_message"]
    out = one(job_id=KEY + "x")
    assert KEY[:13] not in out["error_message"]


@pytest.mark.parametrize(("raw", "tail"), [
    pytest.param(KEY.upper(), KEY[-4:], id="canonical-lowercase"),
    pytest.param("{" + KEY.replace("-", "") + "}", KEY[-4:], id="braces"),
    pytest.param("  not-a-key-XY12  ", "XY12", id="invalid-trimmed-raw"),
    pytest.param("ab", "ab", id="short-invalid"),
    pytest.param(None, None, id="missing"),
    pytest.param("   ", None, id="blank"),
])
def test_review_key_tail(raw: str | None, tail: str | None) -> None:
    assert one(review_key=raw)["review_key_tail"] == tail


# --- properties -------------------------------------------------------------------------------


def _spellings(u: uuid.UUID) -> st.SearchStrategy[str]:
    text = str(u)
    return st.sampled_from([
        text, text.upper(), "{" + text + "}", "urn:uuid:" + text, u.hex, f" {text}\r",
    ])


_uuid_text = st.uuids().flatmap(_spellings)
_cell = st.one_of(
    st.none(),
    st.text(max_size=40),
    _uuid_text,
    st.sampled_from(TRUE_WORDS + FALSE_WORDS + ("job", "client", "JOB", "")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_cell, _cell, _cell, _cell), max_size=25),
       st.sampled_from([None, True, False]), st.sampled_from([None, "job", "client"]))
def test_any_strings_normalise_without_raising(
    rows: list[tuple[str | None, ...]], set_state: bool | None, default_target: str | None
) -> None:
    fields = pa.table({f: pa.array([r[i] for r in rows], pa.string())
                       for i, f in enumerate(FIELDS)})
    out = normalize(fields, set_state=set_state, default_target=default_target)
    assert out.num_rows == len(rows)
    assert tuple(out.column_names) == OUTPUT_COLUMNS
    for result in out.to_pylist():
        values = [result[f] for f in FIELDS]
        if result["error_code"] is None:
            assert None not in values
            assert result["error_message"] is None
            assert str(uuid.UUID(result["job_id"])) == result["job_id"]
            assert str(uuid.UUID(result["review_key"])) == result["review_key"]
            assert result["update_target"] in ("job", "client")
        else:
            assert result["error_code"] in LOCAL_CODES
            assert result["error_message"]
            assert None in values
            if result["review_key"] is not None:
                assert result["review_key"] not in result["error_message"]
                assert result["review_key"].replace("-", "") not in result["error_message"]
        if set_state is not None:
            assert result["do_notify_sms"] is set_state
