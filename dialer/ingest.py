"""Parse and validate uploaded phone lists (the Paycall ``upload_phones`` format).

A file holds one ``number[,cli[,dtmf_originator]]`` record per line and may be plain text,
gzip or zip.  Whole-file problems raise :class:`IngestError`; a bad line becomes a
:class:`BadRow` so one typo does not reject a million-row upload.

Numbers are validated with phonenumbers' metadata, but not through ``phonenumbers.parse``
plus ``is_valid_number`` on every row: that costs ~15-20 µs, more than the whole per-row
budget at the 100k rows/s parsing needs.  :class:`_Country` compiles the same metadata
into one regular expression per (country, length) and decides only the cases it can
prove it decides exactly as phonenumbers does; everything else goes through phonenumbers
itself: invalid numbers (which also need its reason), and bare digits when a default
region asks for the national reading.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO, cast

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumberFormat, ValidationResult

__all__ = [
    "BadRow",
    "IngestError",
    "Row",
    "check_region",
    "normalize_e164",
    "open_upload",
    "parse_file",
    "parse_rows",
]


@dataclass(frozen=True, slots=True)
class Row:
    """An accepted line: numbers in '+' E.164; None cli/dtmf means the campaign default applies."""

    line: int
    number: str
    cli: str | None
    dtmf: str | None


@dataclass(frozen=True, slots=True)
class BadRow:
    """A rejected line, kept so the uploader can be told which line to fix and why."""

    line: int
    reason: str
    raw: str


class IngestError(ValueError):
    """The upload as a whole cannot be read; no row of it should be trusted."""


_RAW_LIMIT = 200
_HEADER_NAMES = frozenset({"number", "phone", "phone_number"})
_MAX_COLUMNS = 3
# Bounds memory when every row carries a different caller id; real lists reuse a handful.
_CLI_CACHE_LIMIT = 65_536

# The seed allows digits, '#', '*', and 'W'/'w' (pauses) and says anything else is ignored,
# so foreign characters are dropped rather than failing the row.
_DTMF_CLEAN = re.compile(r"[0-9#*Ww]*").fullmatch
_DTMF_DROP = re.compile(r"[^0-9#*Ww]+").sub


_ParseResult = tuple[str | None, str | None, str]
"""(E.164 or None, region of the number when valid, reason when invalid)."""

_PARSE_ERRORS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    # Input reaching phonenumbers is already all digits: it is "not a number" only when too short.
    NumberParseException.NOT_A_NUMBER: "too short",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_LENGTH_ERRORS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "too short (a local number without its area code)",
    ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
}
# Python and Postgres spell "end of string" differently; the pattern sources carry this marker.
_END = "\x00END\x00"
# phonenumbers bounds the national significant number to 2..17 digits before validating.
_NSN_LENGTHS = range(2, 18)


def _type_descs(md: PhoneMetadata) -> list[phonenumbers.PhoneNumberDesc | None]:
    # The types phonenumbers' _number_type_helper tries; any match makes the number valid.
    # It only consults the mobile pattern when it differs from the fixed-line one.
    descs = [
        md.premium_rate,
        md.toll_free,
        md.shared_cost,
        md.voip,
        md.personal_number,
        md.pager,
        md.uan,
        md.voicemail,
        md.fixed_line,
    ]
    if not md.same_mobile_and_fixed_line_pattern:
        descs.append(md.mobile)
    return descs


def _compile_region(md: PhoneMetadata) -> dict[int, re.Pattern[str]]:
    """One pattern per national-number length, equivalent to ``_number_type_helper != UNKNOWN``.

    phonenumbers checks the general description, then each type, each guarded by its own
    possible lengths; fixing the length lets all of that fold into a single regex whose
    lookahead is the general pattern and whose alternation is the applicable types.
    """
    return {length: re.compile(source.replace(_END, r"\Z")) for length, source in _region_sources(md).items()}


def _region_sources(md: PhoneMetadata) -> dict[int, str]:
    """The patterns of `_compile_region` as source text, with `_END` where the end anchor goes."""
    general = md.general_desc
    if general is None or not general.national_number_pattern:
        return {}
    compiled: dict[int, str] = {}
    for length in _NSN_LENGTHS:
        if general.possible_length and length not in general.possible_length:
            continue
        alternatives = [
            f"(?:{desc.national_number_pattern})"
            for desc in _type_descs(md)
            if desc is not None
            and desc.national_number_pattern
            and (not desc.possible_length or length in desc.possible_length)
        ]
        if alternatives:
            compiled[length] = f"(?=(?:{general.national_number_pattern}){_END})(?:{'|'.join(alternatives)})"
    return compiled


def sql_phone_rules() -> list[tuple[str, int, str, str | None, int, str | None]]:
    """Rows of ``dialer_phone_rule``: the fast path's rules for Postgres' regex dialect.

    (calling code, region order, region, leading digits, national number length, pattern). A
    region with leading digits but no valid length still gets a row (length 0): it owns those
    numbers, which are then invalid, exactly as `_Country.region_if_valid` decides.
    """
    rows: list[tuple[str, int, str, str | None, int, str | None]] = []
    for code, region_codes in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()):
        for ordinal, region in enumerate(region_codes):
            md = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            if md is None:
                continue
            sources = _region_sources(md)
            leading = md.leading_digits or None
            if not sources:
                rows.append((str(code), ordinal, region, leading, 0, None))
            for length, source in sorted(sources.items()):
                rows.append((str(code), ordinal, region, leading, length, source.replace(_END, "$")))
    return rows


class _Country:
    """Exact fast validity check for one country calling code, compiled on first use."""

    __slots__ = ("_national_prefix", "_regions", "code", "prefix")

    def __init__(self, code: int) -> None:
        self.code = code
        self.prefix = str(code)
        self._regions: list[tuple[str, re.Pattern[str] | None, dict[int, re.Pattern[str]]]] | None = None
        self._national_prefix: re.Pattern[str] | None = None

    def _compile(self) -> list[tuple[str, re.Pattern[str] | None, dict[int, re.Pattern[str]]]]:
        region_codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[self.code]
        main = PhoneMetadata.metadata_for_region_or_calling_code(self.code, region_codes[0])
        if main is not None and main.national_prefix_for_parsing:
            self._national_prefix = re.compile(main.national_prefix_for_parsing)
        regions = []
        for region in region_codes:
            md = PhoneMetadata.metadata_for_region_or_calling_code(self.code, region)
            if md is None:
                continue
            leading = re.compile(md.leading_digits) if md.leading_digits else None
            regions.append((region, leading, _compile_region(md)))
        self._regions = regions
        return regions

    def region_if_valid(self, nsn: str) -> str | None:
        """The number's region if valid; "" if invalid; None if only phonenumbers can tell.

        ``nsn`` is the ASCII digits after the country code of a '+' number.
        """
        regions = self._regions
        if regions is None:
            regions = self._compile()
        # parse() strips a national prefix written after the country code (+44 0 7911...),
        # which changes the number; an empty match capturing nothing leaves it untouched.
        prefix = self._national_prefix
        if prefix is not None:
            m = prefix.match(nsn)
            if m is not None and (m.end() or any(g is not None for g in m.groups())):
                return None
        length = len(nsn)
        if length not in _NSN_LENGTHS:
            return None
        if len(regions) == 1:
            region, _, by_length = regions[0]
            rx = by_length.get(length)
            return region if rx is not None and rx.fullmatch(nsn) else ""
        # Mirrors region_code_for_number: the first region whose leading digits match owns the
        # number (valid or not); regions without leading digits claim only numbers valid in them.
        for region, leading, by_length in regions:
            rx = by_length.get(length)
            if leading is not None:
                if leading.match(nsn):
                    return region if rx is not None and rx.fullmatch(nsn) else ""
            elif rx is not None and rx.fullmatch(nsn):
                return region
        return ""


_COUNTRIES = {str(code): _Country(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _fast_region(digits: str) -> str | None:
    """Region of '+digits' if the compiled metadata proves it valid, else None ("ask phonenumbers")."""
    country = _COUNTRIES.get(digits[:1]) or _COUNTRIES.get(digits[:2]) or _COUNTRIES.get(digits[:3])
    if country is None:
        return None
    return country.region_if_valid(digits[len(country.prefix) :]) or None


def _why_invalid(number: phonenumbers.PhoneNumber) -> str:
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason in _LENGTH_ERRORS:
        return _LENGTH_ERRORS[reason]
    if reason == ValidationResult.INVALID_LENGTH:
        return f"wrong length for country code +{number.country_code}"
    region = phonenumbers.region_code_for_number(number)
    if region and region != phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        return f"not a valid {region} number"
    return f"not a valid number for country code +{number.country_code}"


def _with_phonenumbers(text: str, region: str | None) -> _ParseResult:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return None, None, _PARSE_ERRORS.get(exc.error_type, "not a phone number")
    if not phonenumbers.is_valid_number(number):
        return None, None, _why_invalid(number)
    return (
        phonenumbers.format_number(number, PhoneNumberFormat.E164),
        phonenumbers.region_code_for_number(number),
        "",
    )


def _international(digits: str) -> _ParseResult:
    if digits[0] == "0":
        return None, None, "no country code (country codes never start with 0)"
    region = _fast_region(digits)
    if region is not None:
        return "+" + digits, region, ""
    return _with_phonenumbers("+" + digits, None)


def _resolve(raw: str, region: str | None) -> _ParseResult:
    text = raw.strip()
    if not text:
        return None, None, "empty"
    plus = text[0] == "+"
    digits = text[1:] if plus else text
    # Strict on purpose: the seed defines E.164, and phonenumbers would otherwise accept
    # vanity letters, extensions and Unicode digits, silently dialling something else.
    if not (digits.isascii() and digits.isdigit()):
        return None, None, "expected digits with an optional leading '+'"
    if plus or region is None:
        return _international(digits)
    # A region was given, so bare digits are read as a national number first: beside a US
    # number, caller id 4792345678 is +1 479-234-5678, although +47 92 34 56 78 is a valid
    # Norwegian number too.
    national = _with_phonenumbers(digits, region)
    if national[0] is not None or digits[0] == "0":
        return national
    international = _international(digits)
    if international[0] is not None:
        return international
    if national[2] == international[2]:
        return national
    return (
        None,
        None,
        f"as a national number in {region}: {national[2]}; as an international number: {international[2]}",
    )


def check_region(region: str | None) -> str | None:
    if region is None:
        return None
    upper = region.upper()
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {region!r}")
    return upper


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def normalize_e164(raw: str, default_region: str | None = None) -> str:
    """Return ``raw`` as '+' E.164, or raise ValueError saying why it is not a valid number.

    ``raw`` is digits with an optional leading '+'; bare digits are international
    ('972...' is '+972...') unless ``default_region`` is given, in which case they are
    first read as a national number of that region.  Validity is phonenumbers'
    ``is_valid_number``.
    """
    e164, _, why = _resolve(raw, check_region(default_region))
    if e164 is None:
        raise ValueError(f"invalid E.164 number '{_shown(raw.strip())}': {why}")
    return e164


def _split_quoted(line: str) -> list[str] | str:
    """Fields of a line holding quotes, or the reason it is malformed.

    Each line is parsed alone: no field can legitimately span lines, and letting the csv
    module continue a quote onto the next line would let one stray '"' swallow the rest
    of the file into a single bad row.
    """
    try:
        return next(csv.reader((line,), strict=True))
    except csv.Error as exc:
        return f"malformed CSV quoting: {exc}"


def _bad_encoding(line: str, lineno: int) -> IngestError | None:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        # open_upload decodes with surrogateescape, which maps each undecodable byte to a
        # lone surrogate; recovering it lets the error name the byte and its exact line.
        byte = ord(line[exc.start]) - 0xDC00
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else "a lone surrogate"
        return IngestError(f"line {lineno}: not valid UTF-8 ({shown} at column {exc.start + 1})")
    return None


def parse_rows(
    lines: Iterable[str], *, default_region: str | None = None, start_line: int = 1
) -> Iterator[Row | BadRow]:
    """Yield a Row or BadRow for each non-blank line of an upload, in order.

    Raises IngestError (lazily, while iterating) on text that is not valid UTF-8.  Caller
    ids are read in the region of their destination number; duplicate numbers are kept.
    """
    return _parse_rows(iter(lines), check_region(default_region), start_line)


def _parse_rows(lines: Iterator[str], region: str | None, start_line: int) -> Iterator[Row | BadRow]:
    clis: dict[tuple[str, str | None], _ParseResult] = {}
    lineno = start_line - 1
    header_possible = True
    for line in lines:
        lineno += 1
        if not line.isascii():
            if lineno == start_line and line[:1] == "\ufeff":
                line = line[1:]
            error = _bad_encoding(line, lineno)
            if error is not None:
                raise error
        fields = _split_quoted(line) if '"' in line else line.rstrip("\r\n").split(",")
        if isinstance(fields, str):
            yield BadRow(lineno, fields, line.rstrip("\r\n")[:_RAW_LIMIT])
            header_possible = False
            continue
        count = len(fields)
        number = fields[0].strip()
        if count == 1 and not number:
            continue
        if header_possible:
            header_possible = False
            if number.lower() in _HEADER_NAMES:
                continue
        if count > _MAX_COLUMNS:
            # Spreadsheet exports pad rows with trailing commas; only real extra data is an error.
            if any(extra.strip() for extra in fields[_MAX_COLUMNS:]):
                reason = f"too many columns ({count}; expected number[,cli[,dtmf]])"
                yield BadRow(lineno, reason, line.rstrip("\r\n")[:_RAW_LIMIT])
                continue
            count = _MAX_COLUMNS

        if not number:
            yield BadRow(lineno, "missing number", line.rstrip("\r\n")[:_RAW_LIMIT])
            continue
        # The common case, '+digits', is inlined to keep per-row overhead low.
        digits = number[1:] if number[0] == "+" else (number if region is None else "")
        where = _fast_region(digits) if digits.isdigit() and digits.isascii() else None
        e164: str | None
        if where is not None:
            e164 = "+" + digits
        else:
            e164, where, why = _resolve(number, region)
            if e164 is None:
                reason = f"invalid E.164 number '{_shown(number)}': {why}"
                yield BadRow(lineno, reason, line.rstrip("\r\n")[:_RAW_LIMIT])
                continue

        cli: str | None = None
        if count > 1:
            raw_cli = fields[1].strip()
            if raw_cli:
                # A non-geographic destination (+800...) has no region to read a national id in.
                cli_region = where if where != phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY else region
                key = (raw_cli, cli_region)
                resolved = clis.get(key)
                if resolved is None:
                    if len(clis) >= _CLI_CACHE_LIMIT:
                        clis.clear()
                    resolved = clis[key] = _resolve(raw_cli, cli_region)
                cli = resolved[0]
                if cli is None:
                    reason = f"invalid caller id '{_shown(raw_cli)}': {resolved[2]}"
                    yield BadRow(lineno, reason, line.rstrip("\r\n")[:_RAW_LIMIT])
                    continue

        dtmf: str | None = None
        if count > 2:
            dtmf = fields[2]
            if not _DTMF_CLEAN(dtmf):
                dtmf = _DTMF_DROP("", dtmf)
            # Empty (or nothing left after dropping) means "use the campaign default".
            dtmf = dtmf or None
        yield Row(lineno, e164, cli, dtmf)


_HEAD_BYTES = 8192
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_UNSUPPORTED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "rar",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"PK\x03\x04", b"PK\x05\x06", *_UNSUPPORTED_MAGIC)
_SUPPORTED = "upload a .csv/.txt file, or one compressed as .gz or .zip"
# Corrupt or truncated compressed data surfaces as any of these, at open time or mid-stream.
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)
# zipfile signals an encrypted member or an unsupported compression method at open time only.
_OPEN_ERRORS = (*_READ_ERRORS, RuntimeError, NotImplementedError)


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def _check_text(head: bytes, what: str) -> None:
    if _is_tar(head):
        raise IngestError(f"{what} is a tar archive, which is not supported; {_SUPPORTED}")
    if head.startswith(_ARCHIVE_MAGIC):
        raise IngestError(f"{what} is a nested archive, not text; {_SUPPORTED}")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError(f"{what} is UTF-16 text; save it as UTF-8")
    if b"\x00" in head:
        raise IngestError(f"{what} is not a text file (it contains NUL bytes)")


def _zip_opener(path: Path) -> tuple[Callable[[], IO[bytes]], str, Callable[[], None]]:
    archive = zipfile.ZipFile(path)
    try:
        # The seed parses the first file; directory entries and macOS resource forks
        # (__MACOSX/) are not files a user meant to upload.
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir() and not info.filename.startswith("__MACOSX/")
        ]
        if not members:
            raise IngestError(f"{path.name}: the zip archive contains no files")
    except BaseException:
        archive.close()
        raise
    member = members[0]
    return (lambda: archive.open(member)), f"{path.name}:{member.filename}", archive.close


def open_upload(path: str | Path) -> TextIO:
    """Open an upload as text lines, whatever its container (plain, gzip or zip).

    The container is chosen by magic bytes, so a mis-named file still opens; tarballs and
    other archives are refused.  Undecodable bytes are kept as surrogates so that
    parse_rows can report the exact line, instead of the decoder failing a whole buffer.
    """
    path = Path(path)
    if path.name.lower().endswith(_TAR_SUFFIXES):
        raise IngestError(f"{path.name}: tar archives are not supported; {_SUPPORTED}")
    release: Callable[[], None] | None = None
    try:
        with path.open("rb") as raw:
            magic = raw.read(_HEAD_BYTES)
        opener: Callable[[], IO[bytes]]
        if magic.startswith(b"\x1f\x8b"):
            # typeshed types GzipFile as a BufferedIOBase, which it is, and not as IO[bytes].
            opener, what = (lambda: cast(IO[bytes], gzip.GzipFile(path, "rb"))), path.name
        elif magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            opener, what, release = _zip_opener(path)
        else:
            for signature, kind in _UNSUPPORTED_MAGIC.items():
                if magic.startswith(signature):
                    raise IngestError(f"{path.name}: {kind} compression is not supported; {_SUPPORTED}")
            opener, what = (lambda: path.open("rb")), path.name
        try:
            with opener() as peek:
                head = peek.read(_HEAD_BYTES)
            _check_text(head, what)
            stream = opener()
        finally:
            # An open zip member keeps the archive's file open on its own.
            if release is not None:
                release()
    except IngestError:
        raise
    except _OPEN_ERRORS as exc:
        raise IngestError(f"{path.name}: cannot read: {exc}") from exc
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


def parse_file(path: str | Path, *, default_region: str | None = None) -> Iterator[Row | BadRow]:
    """Open and parse an upload; container errors raise IngestError now, read errors later."""
    region = check_region(default_region)
    stream = open_upload(path)
    return _parse_stream(stream, region, Path(path).name)


def _parse_stream(stream: TextIO, region: str | None, name: str) -> Iterator[Row | BadRow]:
    with stream:
        try:
            yield from _parse_rows(stream, region, 1)
        except _READ_ERRORS as exc:
            # Truncated or corrupt compressed data shows up only once reading reaches it.
            raise IngestError(f"{name}: cannot read: {exc}") from exc
