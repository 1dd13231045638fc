from __future__ import annotations

import gzip
import io
import random
import tarfile
import zipfile
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.ingest import (
    BadRow,
    IngestError,
    Row,
    _fast_region,
    normalize_e164,
    open_upload,
    parse_file,
    parse_rows,
)

SEED_EXAMPLE = "+972540000000\n972723000000,0720000000\n+14155552671,4155551111,w1#113\n972212345678,,1#2\n"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def _numbers(rows: list[Row | BadRow]) -> list[tuple[int, str]]:
    return [(row.line, row.number) for row in rows if isinstance(row, Row)]


def test_seed_example_file_verbatim(tmp_path: Path) -> None:
    """Of the seed's four example lines only the +1 line is valid: phonenumbers' metadata has no IL
    054-0, 072-0 or nine-digit 02 ranges, so +972540000000, caller id 0720000000 and 972212345678
    are BadRows."""
    rows = list(parse_file(_write(tmp_path, "upload_numbers1.csv", SEED_EXAMPLE.encode())))
    assert rows == [
        BadRow(1, "invalid E.164 number '+972540000000': not a valid IL number", "+972540000000"),
        BadRow(2, "invalid caller id '0720000000': not a valid IL number", "972723000000,0720000000"),
        Row(3, "+14155552671", "+14155551111", "w1#113"),
        BadRow(4, "invalid E.164 number '972212345678': not a valid IL number", "972212345678,,1#2"),
    ]


def test_seed_example_shapes_with_allocated_numbers() -> None:
    """Each seed line shape normalises as the seed intends once its numbers are in allocated ranges."""
    lines = ["+972545000000", "972723000000,037654321", "+14155552671,4155551111,w1#113", "97221234567,,1#2"]
    assert list(parse_rows(lines)) == [
        Row(1, "+972545000000", None, None),
        Row(2, "+972723000000", "+97237654321", None),
        Row(3, "+14155552671", "+14155551111", "w1#113"),
        Row(4, "+97221234567", None, "1#2"),
    ]


ROWS = b"+14155552671,+442071838750,1#\r\n972545000000\r\n"
EXPECTED = [Row(1, "+14155552671", "+442071838750", "1#"), Row(2, "+972545000000", None, None)]


def test_csv_with_crlf_line_endings(tmp_path: Path) -> None:
    """A CRLF .csv yields rows with no stray carriage returns."""
    assert list(parse_file(_write(tmp_path, "n.csv", ROWS))) == EXPECTED


def test_txt_with_lf_line_endings(tmp_path: Path) -> None:
    """An LF .txt parses the same as CRLF."""
    assert list(parse_file(_write(tmp_path, "n.txt", ROWS.replace(b"\r\n", b"\n")))) == EXPECTED


def test_gzip_file(tmp_path: Path) -> None:
    """A .gz upload is decompressed transparently."""
    assert list(parse_file(_write(tmp_path, "n.csv.gz", gzip.compress(ROWS)))) == EXPECTED


def test_container_is_detected_by_magic_bytes_not_extension(tmp_path: Path) -> None:
    """Gzip data named .csv is still decompressed."""
    assert list(parse_file(_write(tmp_path, "n.csv", gzip.compress(ROWS)))) == EXPECTED


def test_zip_parses_only_its_first_file(tmp_path: Path) -> None:
    """Per the seed, the first file in a zip is parsed and the others ignored."""
    path = _zip(tmp_path / "n.zip", [("first.csv", ROWS), ("second.csv", b"+33612345678\n")])
    assert list(parse_file(path)) == EXPECTED


def test_zip_skips_directory_and_macos_resource_entries(tmp_path: Path) -> None:
    """Directory entries and __MACOSX/ forks are not the "first file" of a zip."""
    path = _zip(
        tmp_path / "n.zip",
        [("__MACOSX/._n.csv", b"\x00\x05\x16\x07"), ("lists/", b""), ("lists/n.csv", ROWS)],
    )
    assert list(parse_file(path)) == EXPECTED


def test_empty_zip_is_rejected(tmp_path: Path) -> None:
    """A zip holding no file is a whole-file error."""
    with pytest.raises(IngestError, match="contains no files"):
        parse_file(_zip(tmp_path / "n.zip", []))


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tarball_is_rejected_by_content(tmp_path: Path) -> None:
    """A tar.gz is refused even when named plain .gz, instead of parsing tar headers as numbers."""
    path = _write(tmp_path, "n.gz", _tar_gz([("n.csv", ROWS)]))
    with pytest.raises(IngestError, match="tar archive, which is not supported"):
        parse_file(path)


@pytest.mark.parametrize("name", ["n.tar.gz", "n.tgz", "N.TAR.GZ"])
def test_tarball_is_rejected_by_name(tmp_path: Path, name: str) -> None:
    """A file named as a tarball is refused, as the seed says tarballs are not supported."""
    with pytest.raises(IngestError, match="tar archives are not supported"):
        parse_file(_write(tmp_path, name, _tar_gz([("n.csv", ROWS)])))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
        ("+14155552671\n".encode("utf-16"), "UTF-16"),
        (b"BZh91AY&SY", "bzip2 compression is not supported"),
        (gzip.compress(gzip.compress(ROWS)), "nested archive"),
    ],
)
def test_non_text_content_is_rejected(tmp_path: Path, data: bytes, message: str) -> None:
    """Binary, UTF-16, unsupported compression and nested archives are whole-file errors."""
    with pytest.raises(IngestError, match=message):
        parse_file(_write(tmp_path, "n.csv", data))


def test_corrupt_zip_is_an_ingest_error(tmp_path: Path) -> None:
    """A file with a zip signature but no readable archive raises IngestError, not BadZipFile."""
    with pytest.raises(IngestError, match="cannot read"):
        parse_file(_write(tmp_path, "n.zip", b"PK\x03\x04" + b"\x00garbage" * 10))


def test_missing_file_is_an_ingest_error(tmp_path: Path) -> None:
    """An unreadable path raises IngestError, not a bare OSError."""
    with pytest.raises(IngestError, match="cannot read"):
        open_upload(tmp_path / "absent.csv")


def test_truncated_gzip_fails_while_reading(tmp_path: Path) -> None:
    """Corruption past the first block surfaces as IngestError during iteration."""
    data = gzip.compress(b"".join(b"+14155552671\n" for _ in range(50_000)))
    rows = parse_file(_write(tmp_path, "n.gz", data[: len(data) // 2]))
    with pytest.raises(IngestError, match="cannot read"):
        list(rows)


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    """Undecodable bytes abort the file with the exact line and byte, after the good lines before it."""
    path = _write(tmp_path, "n.csv", b"+14155552671\n\n+14155552671,,1\xff#\n")
    rows = parse_file(path)
    assert next(rows) == Row(1, "+14155552671", None, None)
    with pytest.raises(IngestError, match=r"line 3: not valid UTF-8 \(byte 0xff at column 16\)"):
        next(rows)


def test_open_upload_returns_text_lines(tmp_path: Path) -> None:
    """open_upload yields the (decompressed) text with line endings intact for the csv module."""
    with open_upload(_write(tmp_path, "n.gz", gzip.compress(ROWS))) as text:
        assert text.readlines() == ["+14155552671,+442071838750,1#\r\n", "972545000000\r\n"]


def test_header_line_is_skipped_in_any_case() -> None:
    """A first line whose first field is number/phone/phone_number is a header, not a bad row."""
    for header in ("number,cli,dtmf", "PHONE", "Phone_Number,caller"):
        assert list(parse_rows([header, "+14155552671"])) == [Row(2, "+14155552671", None, None)]


def test_header_word_after_the_first_line_is_a_bad_row() -> None:
    """Only the first record can be a header."""
    rows = list(parse_rows(["+14155552671", "number"]))
    assert rows[1] == BadRow(
        2, "invalid E.164 number 'number': expected digits with an optional leading '+'", "number"
    )


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    """A byte-order mark before the header or the first number is ignored."""
    path = _write(tmp_path, "n.csv", b"\xef\xbb\xbfnumber\r\n+14155552671\r\n")
    assert list(parse_file(path)) == [Row(2, "+14155552671", None, None)]
    assert list(parse_rows(["\ufeff+14155552671"])) == [Row(1, "+14155552671", None, None)]


def test_blank_lines_are_skipped_but_counted() -> None:
    """Blank and whitespace-only lines yield nothing, and later line numbers stay physical."""
    rows = list(parse_rows(["\r\n", "+14155552671\r\n", "   \n", "\n", "+1555\n"]))
    assert rows == [
        Row(2, "+14155552671", None, None),
        BadRow(5, "invalid E.164 number '+1555': too short", "+1555"),
    ]


def test_quoted_fields() -> None:
    """Quoted fields, including quoted commas and doubled quotes, are read as CSV."""
    rows = list(parse_rows(['"+14155552671","+442071838750","1,2"', '" 972545000000 ",,"w""1"']))
    assert rows == [
        Row(1, "+14155552671", "+442071838750", "12"),
        Row(2, "+972545000000", None, "w1"),
    ]


def test_unterminated_quote_spoils_only_its_line() -> None:
    """A stray quote is a bad row; it does not swallow the lines after it."""
    rows = list(parse_rows(['"+14155552671,\n', "+14155552671\n"]))
    assert rows == [
        BadRow(1, "malformed CSV quoting: unexpected end of data", '"+14155552671,'),
        Row(2, "+14155552671", None, None),
    ]


def test_bad_rows_carry_line_numbers_and_specific_reasons() -> None:
    """Each kind of bad line gets its own reason, the physical line number and the raw text."""
    lines = [
        "12",
        "+999123456789",
        "+0123456789",
        "+1 415 555 2671",
        "+14155552671,abc",
        "+14155552671,1,2,3",
        ",+14155552671",
        "+14155552671",
    ]
    assert list(parse_rows(lines, start_line=10)) == [
        BadRow(10, "invalid E.164 number '12': too short", "12"),
        BadRow(11, "invalid E.164 number '+999123456789': unknown country code", "+999123456789"),
        BadRow(
            12,
            "invalid E.164 number '+0123456789': no country code (country codes never start with 0)",
            "+0123456789",
        ),
        BadRow(
            13,
            "invalid E.164 number '+1 415 555 2671': expected digits with an optional leading '+'",
            "+1 415 555 2671",
        ),
        BadRow(
            14, "invalid caller id 'abc': expected digits with an optional leading '+'", "+14155552671,abc"
        ),
        BadRow(15, "too many columns (4; expected number[,cli[,dtmf]])", "+14155552671,1,2,3"),
        BadRow(16, "missing number", ",+14155552671"),
        Row(17, "+14155552671", None, None),
    ]


def test_raw_text_is_truncated() -> None:
    """BadRow.raw keeps at most 200 characters of a runaway line, and the reason stays short."""
    (row,) = parse_rows(["9" * 5000])
    assert isinstance(row, BadRow)
    assert row.raw == "9" * 200
    assert row.reason == f"invalid E.164 number '{'9' * 37}...': too long"


def test_trailing_empty_columns_are_tolerated() -> None:
    """Spreadsheet padding (empty extra columns) is not "too many columns"."""
    assert list(parse_rows(["+14155552671,,1#,, ,"])) == [Row(1, "+14155552671", None, "1#")]


def test_dtmf_invalid_characters_are_stripped() -> None:
    """DTMF keeps 0-9 # * W w and drops everything else, as the seed says invalid chars are ignored."""
    rows = list(parse_rows(["+14155552671,,W1-2 3x#*w!", "+14155552671,,abc", "+14155552671,,"]))
    assert [row.dtmf for row in rows if isinstance(row, Row)] == ["W123#*w", None, None]


def test_empty_fields_mean_defaults() -> None:
    """An empty cli or dtmf field is None, so the campaign default applies."""
    assert list(parse_rows(["972545000000,,1#2", "972545000000, ,"])) == [
        Row(1, "+972545000000", None, "1#2"),
        Row(2, "+972545000000", None, None),
    ]


def test_caller_id_is_read_in_the_destination_region() -> None:
    """A national caller id follows its row's destination country, not one file-wide region."""
    lines = [
        "+14155552671,4155551111",
        "+972545000000,037654321",
        "+447400123456,02071838750",
        "+14155552671,4792345678",
        "+4792345678,4792345678",
        "+14155552671,+4792345678",
    ]
    assert [row.cli for row in parse_rows(lines) if isinstance(row, Row)] == [
        "+14155551111",
        "+97237654321",
        "+442071838750",
        "+14792345678",
        "+4792345678",
        "+4792345678",
    ]


def test_default_region_reads_national_numbers() -> None:
    """With default_region, national numbers are accepted; bare international ones still are."""
    rows = list(
        parse_rows(
            ["0545000000,037654321", "972545000000", "+14155552671", "0720000000"], default_region="il"
        )
    )
    assert rows == [
        Row(1, "+972545000000", "+97237654321", None),
        Row(2, "+972545000000", None, None),
        Row(3, "+14155552671", None, None),
        BadRow(4, "invalid E.164 number '0720000000': not a valid IL number", "0720000000"),
    ]


def test_non_geographic_destination_reads_caller_id_in_default_region() -> None:
    """A +800 destination has no country, so a national caller id falls back to default_region."""
    assert list(parse_rows(["+80012345678,037654321"], default_region="IL")) == [
        Row(1, "+80012345678", "+97237654321", None)
    ]


def test_national_number_without_region_is_rejected() -> None:
    """Without default_region a leading-0 national number has no country code."""
    (row,) = parse_rows(["0545000000"])
    reason = "invalid E.164 number '0545000000': no country code (country codes never start with 0)"
    assert row == BadRow(1, reason, "0545000000")


def test_unknown_default_region_fails_at_call_time() -> None:
    """A bad default_region is reported when parse_rows is called, not after the first row."""
    with pytest.raises(ValueError, match="unknown region 'XX'"):
        parse_rows([], default_region="XX")


def test_duplicates_are_kept() -> None:
    """Duplicate numbers are not errors here; the database dedupes."""
    assert _numbers(list(parse_rows(["+14155552671", "14155552671"]))) == [
        (1, "+14155552671"),
        (2, "+14155552671"),
    ]


def _truth(text: str) -> str | None:
    try:
        number = phonenumbers.parse(text)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _ours(text: str) -> str | None:
    try:
        return normalize_e164(text)
    except ValueError:
        return None


REAL_LOOKING = [
    "+14155552671",
    "+447911123456",
    "+447400123456",
    "+972540000000",
    "+972545000000",
    "+61412345678",
    "+33612345678",
    "+4915112345678",
    "+819012345678",
    "+390612345678",
    "+79161234567",
    "+78001234567",
    "+5491123456789",
    "+16135550123",
    "+18765550123",
    "+80012345678",
    "+4407400123456",
    "+1555",
    "+999123456789",
    "+0123456789",
    "+12",
    "+1",
]


@pytest.mark.parametrize("text", REAL_LOOKING)
def test_normalize_agrees_with_phonenumbers_on_real_looking_numbers(text: str) -> None:
    """normalize_e164 accepts exactly what parse + is_valid_number accepts, with the same E.164."""
    assert _ours(text) == _truth(text)


def test_fast_path_matches_phonenumbers_for_every_example_number() -> None:
    """For every region's and non-geographic entity's example numbers the compiled check gives
    phonenumbers' validity and region."""
    examples: list[phonenumbers.PhoneNumber] = []
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in range(12):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                examples.append(example)
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            examples.append(example)
    undecided = 0
    for example in examples:
        digits = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:]
        fast = _fast_region(digits)
        if fast is None:
            undecided += 1
        else:
            assert fast == phonenumbers.region_code_for_number(example), digits
    # Deferring is always correct but slow; it must stay the exception (+7 8..., LT/BY prefixes).
    assert undecided < len(examples) // 100


def test_fast_path_decides_common_numbers() -> None:
    """The benchmark's countries are decided by the fast path, not deferred to phonenumbers."""
    for digits, region in [
        ("14155552671", "US"),
        ("16135550123", "CA"),
        ("447400123456", "GB"),
        ("972545000000", "IL"),
        ("4915112345678", "DE"),
        ("33612345678", "FR"),
        ("61412345678", "AU"),
    ]:
        assert _fast_region(digits) == region


def _mutated_example(rnd: random.Random) -> str:
    region = rnd.choice(sorted(phonenumbers.SUPPORTED_REGIONS))
    example = phonenumbers.example_number_for_type(region, rnd.choice([0, 1, 2, 3]))
    if example is None:
        example = phonenumbers.example_number(region)
    digits = (
        list(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)[1:])
        if example
        else ["1"]
    )
    for _ in range(rnd.randrange(3)):
        position = rnd.randrange(len(digits) + 1)
        edit = rnd.randrange(3)
        if edit == 0 and position < len(digits):
            digits[position] = str(rnd.randrange(10))
        elif edit == 1 and position < len(digits):
            del digits[position]
        else:
            digits.insert(position, str(rnd.randrange(10)))
    return "".join(digits)


DIGITS = st.text(alphabet="0123456789", min_size=0, max_size=20)
CANDIDATES = st.one_of(
    st.builds(
        lambda cc, rest: f"{cc}{rest}",
        st.sampled_from(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)),
        DIGITS,
    ),
    st.randoms(use_true_random=False).map(_mutated_example),
    DIGITS,
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CANDIDATES)
def test_plus_numbers_agree_with_phonenumbers(digits: str) -> None:
    """For '+digits', normalize_e164 and its fast path agree with phonenumbers.parse + is_valid_number."""
    text = "+" + digits
    truth = _truth(text)
    assert _ours(text) == truth
    fast = _fast_region(digits)
    if fast is not None:
        assert truth == text
        assert fast == phonenumbers.region_code_for_number(phonenumbers.parse(text))


@settings(max_examples=500, deadline=None)
@given(CANDIDATES)
def test_bare_digits_mean_international(digits: str) -> None:
    """Without a region, bare digits normalise exactly as the same digits after '+'."""
    assert _ours(digits) == (_ours("+" + digits) if digits else None)


def test_normalize_error_messages() -> None:
    """normalize_e164 raises ValueError naming the input and the reason."""
    with pytest.raises(ValueError, match=r"^invalid E\.164 number '12': too short$"):
        normalize_e164("12")
    with pytest.raises(ValueError, match=r"^invalid E\.164 number '': empty$"):
        normalize_e164("  ")
    with pytest.raises(ValueError, match=r"'\+12120001234': not a valid number for country code \+1$"):
        normalize_e164("+12120001234")
    with pytest.raises(ValueError, match=r"'\+3361234567890123': too long$"):
        normalize_e164("+3361234567890123")


def test_normalize_national_first_with_region() -> None:
    """With a region, bare digits are national first: 4792345678 in US is not Norwegian +47 92345678."""
    assert normalize_e164("4792345678", "US") == "+14792345678"
    assert normalize_e164("4792345678") == "+4792345678"
    assert normalize_e164("0545000000", "IL") == "+972545000000"
    assert normalize_e164(" +972545000000 ", "US") == "+972545000000"
