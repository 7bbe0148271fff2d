"""Readers: one corpus unit (a file or one split of a Hugging Face dataset) -> documents.

Every reader is a small class with two methods:
  documents() -> Iterator[str | None]   the documents in order (None marks an empty record, which
                                         the caller skips and counts)
  position()  -> JSON-serialisable       where the reader stands after the last document it yielded
A reader built with `start=position()` yields exactly the documents that followed, without
duplicating or losing one: plain local files resume at a byte offset (seek, no re-reading),
compressed or remote ones by reading forward to it, Parquet at a row (whole row groups are skipped
via metadata), Hub datasets at a row (or the `datasets` iterator state for streaming). (`prepare`
itself restarts an interrupted task from its start: its tasks are small and deterministic.)

Files are local paths or fsspec URLs (hf://datasets/..., s3://...); .zst/.gz are decompressed
while streaming. Files are processed as bytes and decoded one record at a time, so memory stays
bounded by the block size plus one record, and undecodable bytes are replaced (U+FFFD) and
counted, never fatal. Bad records (invalid JSON, a missing or non-text field) stop the run with a
one-line error naming the file, the byte offset and the fix, rather than being skipped silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

# Read size for local files. A module constant so tests can shrink it and prove that where blocks
# end never changes the documents.
BLOCK_SIZE = 1 << 20

_ASCII_WS = b" \t\r\n\f\v"
# Paragraph separator: the newline ending a line, then one or more whitespace-only lines. Every
# repetition must end at a newline, so matching stays linear even on huge runs of blank lines.
_PARAGRAPH_SEP = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_NON_WS = re.compile(rb"[^ \t\r\n\f\v]")
_LINE_SEP = re.compile(rb"\n")
_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t\r\f\v]*\n)*")
_WS_START = {b" ", b"\t", b"\r", b"\n", b"\f", b"\v"}
_WS_INTS = frozenset(_ASCII_WS)

SAMPLE_BY = ("paragraph", "line", "document")


class CorpusError(ValueError):
    """Bad input (missing field, unreadable file, empty corpus...). The message names the fix."""


@dataclass
class ReadStats:
    """Counters shared by the readers of one run (the pipeline snapshots them per chunk)."""

    replacements: int = 0  # undecodable byte sequences replaced by U+FFFD
    examples: list[str] = field(default_factory=list)  # a few "file:offset" places, for the report

    def note(self, where: str, n: int) -> None:
        self.replacements += n
        if len(self.examples) < 5:
            self.examples.append(where)


# A record this undecodable is not text: one replaced sequence per BINARY_RATIO bytes (text with a few
# stray Latin-1 bytes stays far below), or any NUL byte, in a record of at least BINARY_MIN_BYTES.
BINARY_RATIO = 16
BINARY_MIN_BYTES = 64


def refuse_binary(path: Any, offset: int, data: bytes, replaced: int) -> None:
    """Raise CorpusError when `data` (a record read as text) is mostly not UTF-8 text: a binary file
    named .txt/.jsonl would otherwise be tokenized as U+FFFD soup."""
    if len(data) < BINARY_MIN_BYTES or (replaced * BINARY_RATIO < len(data) and b"\x00" not in data):
        return
    nul = " and NUL bytes" if b"\x00" in data else ""
    raise CorpusError(
        f"{path} (byte {offset}) does not look like text: {replaced:,} undecodable UTF-8 sequences"
        f"{nul} in a record of {len(data):,} bytes. Is it a binary "
        "file? Remove it from --input (or convert it to UTF-8 text)."
    )


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each undecodable sequence by U+FFFD; returns (text, replacements).

    Same output as `data.decode("utf-8", "replace")`, but it also says how many sequences were
    replaced so `prepare` can report it instead of silently corrupting text.
    """
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts: list[str] = []
    count = 0
    pos = 0
    while True:
        try:
            parts.append(data[pos:].decode("utf-8"))
            return "".join(parts), count
        except UnicodeDecodeError as e:
            parts.append(data[pos : pos + e.start].decode("utf-8"))
            parts.append("\ufffd")
            count += 1
            pos += e.end


def is_remote(source: str | Path) -> bool:
    """An fsspec URL (hf://, s3://, gs://, https://...) rather than a local path."""
    return isinstance(source, str) and "://" in source


def open_bytes(source: str | Path, compression: str | None = None, start: int = 0) -> BinaryIO:
    """A binary stream of `source` (local path or fsspec URL), decompressed, positioned at `start`.

    Plain local files are opened directly (seekable, fastest). Compressed (.zst, .gz) and remote
    files go through fsspec, the I/O layer datatrove also uses, which streams them; a compressed
    stream cannot seek, so a non-zero `start` is reached by reading forward.
    """
    if compression is None and not is_remote(source):
        f: Any = open(source, "rb")
        f.seek(start)
        return f
    import fsspec

    try:
        f = fsspec.open(str(source), "rb", compression=compression).open()
    except (OSError, ValueError) as e:
        raise CorpusError(f"cannot open {source}: {type(e).__name__}: {e}. Check the path or URL "
                          "(and credentials, e.g. `huggingface-cli login` for gated hf:// data).") from e
    skip = start
    while skip > 0:
        got = f.read(min(skip, BLOCK_SIZE))
        if not got:
            break
        skip -= len(got)
    return f


def _records(path: str | Path, start: int, sep: re.Pattern[bytes], *, defer_tail: bool = False,
             compression: str | None = None) -> Iterator[tuple[bytes, int]]:
    """(record bytes, offset just past the record and its separator), from byte `start`.

    Reads BLOCK_SIZE bytes at a time. With `defer_tail`, a separator that reaches the end of the
    buffer is only accepted once a non-blank byte follows it (more blank lines may come in the
    next block), so where blocks end never changes the records.
    """
    with open_bytes(path, compression, start) as f:
        base = start  # file offset of buf[0]
        buf = b""
        scan = 0  # where a separator can start in buf (nothing before it can match any more)
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                if buf:
                    yield buf, base + len(buf)
                return
            buf += block
            last = 0
            for m in sep.finditer(buf, scan):
                if defer_tail and _NON_WS.search(buf, m.end()) is None:
                    break  # the last separator may continue in the next block
                yield buf[last : m.start()], base + m.end()
                last = m.end()
            buf = buf[last:]
            base += last
            # A separator is all whitespace, so one spanning the block boundary starts inside the
            # buffer's trailing whitespace; scanning from there keeps long records linear.
            scan = len(buf)
            while scan and buf[scan - 1] in _WS_INTS:
                scan -= 1


class TextFileReader:
    """A .txt file split into documents by `sample_by`:

    paragraph  documents are separated by blank (whitespace-only) lines; each keeps its inner
               newlines and indentation, minus surrounding blank lines and trailing whitespace
    line       every non-blank line is a document (line terminator removed)
    document   the whole file is one document (it must fit in memory)
    """

    def __init__(self, path: str | Path, sample_by: str, stats: ReadStats, start: int | None = None,
                 compression: str | None = None):
        if sample_by not in SAMPLE_BY:
            raise CorpusError(f"sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
        self.path, self.sample_by, self.stats = path, sample_by, stats
        self.compression = compression
        self._pos = start or 0

    def position(self) -> int:
        return self._pos

    def documents(self) -> Iterator[str | None]:
        if self.sample_by == "document":
            if self._pos == 0:
                with open_bytes(self.path, self.compression) as f:
                    data = f.read()
                self._pos = len(data)
                yield self._decode(data, 0) if data.strip(_ASCII_WS) else None
            return
        paragraphs = self.sample_by == "paragraph"
        sep = _PARAGRAPH_SEP if paragraphs else _LINE_SEP
        # This loop runs once per document on the pipeline's critical path: keep it lean.
        for rec, end in _records(self.path, self._pos, sep, defer_tail=paragraphs,
                                 compression=self.compression):
            offset = self._pos
            self._pos = end
            if paragraphs:
                rec = rec.rstrip(_ASCII_WS)
                if rec[:1] in _WS_START:
                    rec = rec[_LEADING_BLANK_LINES.match(rec).end() :]  # type: ignore[union-attr]
            elif not rec.strip(_ASCII_WS):
                rec = b""
            else:
                rec = rec.rstrip(b"\r")
            yield self._decode(rec, offset) if rec else None

    def _decode(self, rec: bytes, offset: int) -> str:
        try:
            text = rec.decode("utf-8")
            n = 0
        except UnicodeDecodeError:
            text, n = decode_utf8(rec)
            self.stats.note(f"{self.path}:byte {offset}", n)
        if n or b"\x00" in rec[:4096]:
            refuse_binary(self.path, offset, rec, n)
        return text


class JsonlReader:
    """One JSON object per line; the document is the string in `text_field`."""

    def __init__(self, path: str | Path, text_field: str, stats: ReadStats, start: int | None = None,
                 compression: str | None = None):
        self.path, self.text_field, self.stats = path, text_field, stats
        self.compression = compression
        self._pos = start or 0

    def position(self) -> int:
        return self._pos

    def documents(self) -> Iterator[str | None]:
        for rec, end in _records(self.path, self._pos, _LINE_SEP, compression=self.compression):
            offset = self._pos
            self._pos = end
            if not rec.strip(_ASCII_WS):
                continue  # blank lines between records are not documents
            line, n = decode_utf8(rec)
            if n:
                self.stats.note(f"{self.path}:byte {offset}", n)
                refuse_binary(self.path, offset, rec, n)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(
                    f"{self.path} (byte {offset}): not valid JSON ({e.msg}). Each line of a .jsonl "
                    "file must be one JSON object; fix or remove the line."
                ) from None
            if not isinstance(obj, dict):
                raise CorpusError(
                    f"{self.path} (byte {offset}): expected a JSON object per line, got "
                    f"{type(obj).__name__}."
                )
            yield _field(obj, self.text_field, f"{self.path} (byte {offset})")


def _field(record: dict[str, Any], text_field: str, where: str) -> str | None:
    try:
        value = record[text_field]
    except KeyError:
        raise CorpusError(
            f"{where}: no field {text_field!r}; available fields: {sorted(record)}. "
            f"Pass --text-field with one of them."
        ) from None
    if value is None or isinstance(value, str):
        return value or None
    raise CorpusError(
        f"{where}: field {text_field!r} holds {type(value).__name__}, not text. "
        "Pass --text-field naming a string field."
    )


class ParquetReader:
    """A Parquet file's `text_field` column, read a row group at a time."""

    BATCH_ROWS = 1024

    def __init__(self, path: str | Path, text_field: str, start: int | None = None):
        self.path, self.text_field = path, text_field
        self._pos = start or 0

    def position(self) -> int:
        return self._pos

    def documents(self) -> Iterator[str | None]:
        import pyarrow.parquet as pq

        # Remote files through fsspec: the footer is read first, then only the needed row groups.
        pf = pq.ParquetFile(open_bytes(self.path) if is_remote(self.path) else self.path)
        names = pf.schema_arrow.names
        if self.text_field not in names:
            raise CorpusError(
                f"{self.path}: no column {self.text_field!r}; available columns: {names}. "
                "Pass --text-field with one of them."
            )
        # Skip whole row groups before the resume row using only the footer metadata.
        first_row, groups = 0, []
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first_row + n <= self._pos and not groups:
                first_row += n
                continue
            groups.append(g)
        if not groups:
            return
        row = first_row
        for batch in pf.iter_batches(
            batch_size=self.BATCH_ROWS, row_groups=groups, columns=[self.text_field]
        ):
            values = batch.column(0).to_pylist()
            for value in values:
                row += 1
                if row <= self._pos:
                    continue
                self._pos = row
                yield _field({self.text_field: value}, self.text_field, f"{self.path} (row {row - 1})")


class HubReader:
    """One split of a `datasets.Dataset` (map-style) or `datasets.IterableDataset` (streaming).

    Position is {"row": rows consumed} plus, for streaming, the `datasets` iterator state so a
    resume does not re-download everything before the stopping point.
    """

    SLICE_ROWS = 1000

    def __init__(self, dataset: Any, text_field: str, label: str, start: dict | None = None):
        self.dataset, self.text_field, self.label = dataset, text_field, label
        start = start or {}
        self._row: int = start.get("row", 0)
        self._state: Any = start.get("state")
        self._skipped = False  # resumed by skip(): its iterator state no longer fits the origin

    def position(self) -> dict[str, Any]:
        pos: dict[str, Any] = {"row": self._row}
        if self._is_streaming() and not self._skipped:
            try:
                state = self.dataset.state_dict()
                json.dumps(state)  # only keep it if it can live in the JSON state file
                pos["state"] = state
            except Exception:
                pass  # fall back to skipping `row` examples on resume
        return pos

    def _is_streaming(self) -> bool:
        import datasets

        return isinstance(self.dataset, datasets.IterableDataset)

    def _check_columns(self, names: list[str] | None) -> None:
        if names is not None and self.text_field not in names:
            raise CorpusError(
                f"{self.label}: no field {self.text_field!r}; available fields: {sorted(names)}. "
                "Pass --text-field with one of them."
            )

    def documents(self) -> Iterator[str | None]:
        ds = self.dataset
        self._check_columns(ds.column_names)
        if not self._is_streaming():
            n = len(ds)
            ds = ds.select_columns([self.text_field])
            for lo in range(self._row, n, self.SLICE_ROWS):
                values = ds[lo : min(n, lo + self.SLICE_ROWS)][self.text_field]
                for value in values:
                    self._row += 1
                    where = f"{self.label} row {self._row - 1}"
                    yield _field({self.text_field: value}, self.text_field, where)
            return
        if self._row:
            if self._state is not None and hasattr(ds, "load_state_dict"):
                ds.load_state_dict(self._state)
            else:
                ds = ds.skip(self._row)
                self._skipped = True
        for example in ds:
            self._row += 1
            yield _field(example, self.text_field, f"{self.label} row {self._row - 1}")
