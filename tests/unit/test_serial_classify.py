"""Serial classification and hash signatures: SPEC vectors and property-based tests."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgworkers.jobs.serials.format import (
    ALPHABET,
    Kind,
    classify,
    compile_patterns,
    component_parent,
    format_serial,
    hash_ok,
    hash_signature,
)
from bgworkers.settings import SerialConsistencySettings

EXEMPT = compile_patterns(SerialConsistencySettings().exempt_patterns)
GOOD = "MAIS-HAT-TESTP822-20251114-00123-1YLJ-2"
GOOD2 = "MAIS-HAT-TESTP822-20260111-00009-2QLM-Y"
DOC_EXAMPLE = "MA01-HAT-BAG-20251109-00027-A9K2-X"  # wrong checksum: expected N
SALT = "0123456789abcdef" * 4
#: printf '%s' "$GOOD" | openssl dgst -sha256 -hmac "$SALT"
GOOD_SIGNATURE = "15b730d201d345f39d79170bce43460de001ea463ff33caf58e5e67a1d498c21"


@pytest.mark.parametrize(
    ("serial", "kind"),
    [
        (GOOD, Kind.STANDARD),
        (GOOD2, Kind.STANDARD),
        (DOC_EXAMPLE, Kind.CHECKSUM_FAIL),
        (DOC_EXAMPLE[:-1] + "N", Kind.STANDARD),
        ("TEMP-20251114-0001", Kind.EXEMPT),
        ("BLV-2019-00A1Z9", Kind.EXEMPT),  # legacy PREFIX-YYYY-XXXXXX
        ("MO-2511-00042-01", Kind.EXEMPT),
        ("LOT-20251114-TOTE01-003", Kind.EXEMPT),
        (f"{GOOD}-STRAP", Kind.COMPONENT),
        (f"{GOOD}-BODY-2", Kind.COMPONENT),
        (f"{DOC_EXAMPLE}-STRAP", Kind.INVALID_FORMAT),  # parent fails its checksum
        (f"{GOOD}-STRAP-2-3", Kind.INVALID_FORMAT),
        (f"{GOOD}-2", Kind.INVALID_FORMAT),  # a part starts with a letter
        (f"{GOOD}-strap", Kind.INVALID_FORMAT),
        (GOOD.lower(), Kind.INVALID_FORMAT),
        (GOOD[:-2], Kind.INVALID_FORMAT),  # check character missing
        (GOOD.replace("-", "_"), Kind.INVALID_FORMAT),
        ("MAIS-HAT-TESTP822-20251131-00123-1YLJ-2", Kind.INVALID_FORMAT),  # 31 November
        ("MAIS-HAT-TESTP822-٢٠٢٥١١١٤-00123-1YLJ-2", Kind.INVALID_FORMAT),  # Arabic-Indic digits
        (GOOD + "\n", Kind.INVALID_FORMAT),
        (" " + GOOD, Kind.INVALID_FORMAT),
        ("", Kind.INVALID_FORMAT),
        ("\x00", Kind.INVALID_FORMAT),
    ],
)
def test_classify_examples(serial: str, kind: Kind) -> None:
    assert classify(serial, EXEMPT) is kind


def test_standard_form_wins_over_exempt_patterns() -> None:
    """A value in standard form is judged as standard even if a pattern would exempt it."""
    good = format_serial("MO", "hatthasilpa", "BAG", date(2025, 1, 2), 7, "AB12")
    assert good.startswith("MO-")
    assert classify(good, EXEMPT) is Kind.STANDARD
    assert classify(good[:-1] + _other(good[-1]), EXEMPT) is Kind.CHECKSUM_FAIL


def test_exempt_patterns_are_the_setting() -> None:
    assert classify("TEMP-20251114-0001", ()) is Kind.INVALID_FORMAT
    assert classify("OLD/42", compile_patterns([r"^OLD/\d+$"])) is Kind.EXEMPT
    assert Kind.EXEMPT.is_legacy and Kind.COMPONENT.is_legacy
    assert not any(k.is_legacy for k in (Kind.STANDARD, Kind.CHECKSUM_FAIL, Kind.INVALID_FORMAT))


def test_component_parent() -> None:
    parent = component_parent(f"{GOOD}-LINING-12")
    assert parent is not None and parent.checksum_ok and parent.seq == "00123"
    assert component_parent(GOOD) is None
    assert component_parent(f"{GOOD}-STRAP-1234") is None


def test_hash_signature_vector() -> None:
    assert hash_signature(GOOD, SALT) == GOOD_SIGNATURE
    assert hash_ok(GOOD, GOOD_SIGNATURE, SALT)
    assert hash_ok(GOOD, f" {GOOD_SIGNATURE.upper()} ", SALT)
    assert not hash_ok(GOOD2, GOOD_SIGNATURE, SALT)
    assert not hash_ok(GOOD, GOOD_SIGNATURE, SALT.upper())  # keyed with the salt's ASCII
    assert not hash_ok(GOOD, None, SALT)
    assert not hash_ok(GOOD, "", SALT)
    assert not hash_ok(GOOD, "é" * 64, SALT)


def _other(ch: str) -> str:
    return ALPHABET[(ALPHABET.index(ch) + 1) % 36]


# ---------------------------------------------------------------- properties

upper_alnum = st.text(alphabet=ALPHABET, min_size=2, max_size=8)
standard_serials = st.builds(
    format_serial,
    upper_alnum,
    st.sampled_from(["hatthasilpa", "oem", "classic", "hybrid"]),
    upper_alnum,
    st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31)),
    st.integers(0, 99999),
    st.text(alphabet=ALPHABET, min_size=4, max_size=4),
)
strange_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10_000),
    st.text(alphabet=st.sampled_from("-0123456789ABCZ\x00é ٢"), max_size=120),
    st.builds(lambda s, tail: s + tail, standard_serials, st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(strange_text)
@example("\x00" * 10_000)
@example("A-" * 5_000)
@example(("MAIS-HAT-TESTP822-20251114-00123-1YLJ-2-" * 250)[:10_000])
@example("\ud800")  # a lone surrogate
def test_classify_total_on_any_text(serial: str) -> None:
    assert isinstance(classify(serial, EXEMPT), Kind)
    assert hash_ok(serial, serial, SALT) is False


@settings(max_examples=200, deadline=None)
@given(standard_serials)
def test_generated_serials_are_standard(serial: str) -> None:
    assert classify(serial, EXEMPT) is Kind.STANDARD
    assert classify(serial[:-1] + _other(serial[-1]), EXEMPT) is Kind.CHECKSUM_FAIL
    assert classify(f"{serial}-FLAP", EXEMPT) is Kind.COMPONENT
    assert classify(f"{serial[:-1]}{_other(serial[-1])}-FLAP", EXEMPT) is Kind.INVALID_FORMAT
    assert hash_ok(serial, hash_signature(serial, SALT), SALT)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=300)))
def test_hash_ok_total(serial: str, signature: str | None) -> None:
    assert hash_ok(serial, signature, SALT) in (True, False)
