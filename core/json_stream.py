"""Reading a large JSON file without holding it: chosen top-level lists go to a sink element
by element, so a COCO-size annotation file never exists whole as Python objects.

Kept over ijson (yajl2_c): with it load_dataset took 3.3× as long on a 150k-person COCO file
(BENCHMARKS.md "Dataset parsing"): streaming two lists costs a yajl pass each, or a Python step
per token.

`json.load` of such a file holds all its dicts, lists and floats at once (BENCHMARKS.md); here
the file is decoded a block at a time, each list element is parsed by json's own C scanner (so
every value is exactly what `json.load` gives) and handed on, and only the block in hand and one
element are alive at once. Any syntax or encoding problem is reported by re-reading the file
with `files.read_json`, so the message is the one `json.load` gives.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from uniskel.core.errors import UniError
from uniskel.core.files import read_json

BLOCK = 1 << 20  # bytes read and decoded at a time; doubled while one value does not fit
_WHITESPACE = " \t\n\r"  # JSON's four
_AFTER_VALUE = ",]}:"  # what may follow a value in valid JSON (or the end of the file)
_DECODER = json.JSONDecoder()

Sink = Callable[[Any], None]


@dataclass
class Streamed:
    """Stands where a streamed list was: its elements went to `sink`, one by one."""

    sink: Any
    length: int = 0


class _Invalid(Exception):
    """Not JSON (the exact message comes from a full parse)."""


class _Text:
    """The file's text, read and decoded `block` bytes at a time; text before `pos` is dropped."""

    def __init__(self, file: BinaryIO, block: int):
        self.file = file
        head = file.read(4)
        self.decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("surrogatepass")
        self.buf, self.pos, self.base, self.eof = "", 0, block, False
        self._feed(head)

    def _feed(self, data: bytes) -> None:
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise _Invalid from None
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        self.eof = not data

    def more(self, block: int) -> None:
        if self.eof:
            raise _Invalid
        self._feed(self.file.read(block))

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), made current."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < n or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self.more(self.base)

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise _Invalid
        self.pos += 1
        return c

    def value(self) -> Any:
        """One JSON value. A value is taken only when a delimiter follows it in the decoded text
        (a number cut by the block's end, 12|34 or 1e|5, parses as a shorter number), else it is
        read again with more text."""
        self.peek()
        block = self.base
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                end = None
            if end is not None:
                n, j = len(self.buf), end
                while j < n and self.buf[j] in _WHITESPACE:
                    j += 1
                if self.eof or (j < n and self.buf[j] in _AFTER_VALUE):
                    self.pos = j
                    return value
            self.more(block)
            block *= 2  # a value longer than a block: read twice as much next time


def _list(text: _Text, sink: Sink) -> Streamed:
    text.expect("[")
    out = Streamed(sink)
    if text.peek() == "]":
        text.pos += 1
        return out
    while True:
        sink(text.value())
        out.length += 1
        if text.expect(",]") == "]":
            return out


def _object(text: _Text, sinks: dict[str, Callable[[], Sink]]) -> dict:
    text.expect("{")
    out: dict = {}
    if text.peek() == "}":
        text.pos += 1
        return out
    while True:
        if text.peek() != '"':
            raise _Invalid
        key = text.value()
        text.expect(":")
        # A repeated key replaces the earlier value, as in json.load: a fresh sink each time.
        out[key] = (_list(text, sinks[key]()) if key in sinks and text.peek() == "["
                    else text.value())
        if text.expect(",}") == "}":
            return out


def read_json_stream(path: Path, sinks: dict[str | None, Callable[[], Sink]],
                     what: str = "annotation file", block: int = BLOCK) -> Any:
    """Parsed JSON, as `files.read_json` gives it, except for lists sent to sinks.

    sinks maps a top-level key (or None: the top-level value itself) to a factory of sinks; a list
    found there has each element passed to a fresh sink and is replaced by `Streamed(sink, n)`.
    UniError naming the file when it is missing or not JSON (the message of `read_json`).
    Callers also accept a plain list where they asked for a stream.
    """
    path = Path(path)
    if not path.is_file():
        raise UniError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            text = _Text(f, block)
            first = text.peek()
            if first == "[" and None in sinks:
                value = _list(text, sinks[None]())
            elif first == "{":
                value = _object(text, {k: v for k, v in sinks.items() if k is not None})
            else:
                value = text.value()
            if text.peek():
                raise _Invalid  # json.load's "Extra data"
            return value
    except _Invalid:
        pass
    # Not JSON: json.load's own message. (Were the two readers ever to disagree, json.load's
    # reading is returned, whole.)
    return read_json(path, what)
