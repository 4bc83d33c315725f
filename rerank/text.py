"""Document text for the reranker: what one hit's `_source` turns into before the model sees it.

Three modes, picked by the per-index `text:` block:
- `fields`: the listed dot paths, one non-empty value per line;
- `template`: a string with `{dot.path}` placeholders;
- neither: the whole source flattened into `key: value` lines (JSON-aware, source order).
Whatever the mode, the result is cut to a cheap token budget so a huge document never reaches the model tokenizer.
Nothing here raises on odd data: sources come from the cluster and can be anything.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

# Deeper than this is pathological (or cyclic); such parts are dropped rather than risking a RecursionError.
MAX_DEPTH = 32

# Scripts written without spaces between words: every character is its own piece, otherwise a whole CJK or Thai
# paragraph would match `\w+` once and count as a single token, defeating the budget.
_NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003134f"  # CJK extensions B and later
)
# Longest word-run counted as one piece: a 1 MB base64 blob or URL-less token must still hit the budget.
_MAX_WORD_CHARS = 32
# `regex`, not `re`: its `\w` includes combining marks (Unicode TS #18), so a Hindi or Arabic word with its vowel
# signs is one piece, and a Thai consonant takes its vowel and tone marks along. With `re` every mark counted as a
# piece of its own, the budget cut text the model would still have read (up to 0.016 NDCG@10 on XQuAD-R hi).
_PIECE = regex.compile(
    rf"[{_NO_SPACE_SCRIPTS}]\p{{M}}*|[^\W{_NO_SPACE_SCRIPTS}]{{1,{_MAX_WORD_CHARS}}}|[^\w\s]\p{{M}}*"
)
# The same pieces for ASCII text, where there are no marks and no unspaced scripts: `re` finds them twice as fast.
_ASCII_PIECE = re.compile(rf"\w{{1,{_MAX_WORD_CHARS}}}|[^\w\s]", re.ASCII)


@dataclass(frozen=True)
class _Placeholder:
    path: str


_Segment = str | _Placeholder


class TextConfig(BaseModel):
    """The `text:` block of a per-index rule: which parts of `_source` the reranker reads."""

    model_config = ConfigDict(extra="forbid")

    fields: list[str] | None = Field(
        None, description="dot paths into _source, in order; one line per non-empty value"
    )
    template: str | None = Field(
        None, description="text with {dot.path} placeholders; {{ and }} for literal braces"
    )
    max_tokens: int = Field(512, gt=0, description="cheap pre-tokenizer budget (words and punctuation marks)")

    # The template parsed once at load, as lines of literal text and placeholders.
    _lines: list[list[_Segment]] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        if self.fields is not None and self.template is not None:
            raise ValueError("text: set either 'fields' or 'template', not both")
        if self.fields is not None:
            if not self.fields:
                raise ValueError("text.fields: list at least one field (or omit it to use the whole _source)")
            for path in self.fields:
                _check_path(path, "text.fields")
        if self.template is not None:
            self._lines = _parse_template(self.template)
        return self

    def source_fields(self) -> list[str] | None:
        """The `_source` paths this config reads, in first-use order; None when it needs the whole `_source`."""
        if self.fields is not None:
            return list(dict.fromkeys(self.fields))
        if self._lines is not None:
            paths = (seg.path for line in self._lines for seg in line if isinstance(seg, _Placeholder))
            return list(dict.fromkeys(paths))
        return None


def build_document_text(source: Mapping[str, Any] | None, config: TextConfig) -> str:
    """The text the reranker scores for one hit, already cut to `config.max_tokens` pieces."""
    try:
        if config.fields is not None:
            values = (v for v in (render_path(source, p) for p in config.fields) if v.strip())
            # Every kept line holds at least one piece, so lines past budget + 1 can never survive the cut.
            text = "\n".join(islice(values, config.max_tokens + 1))
        elif config._lines is not None:
            text = _render_template(source, config._lines)
        else:
            text = "\n".join(islice(_source_lines(source), config.max_tokens + 1))
    except Exception:  # a source shape nobody anticipated must cost one hit's text, never the request
        text = ""
    return truncate_tokens(text, config.max_tokens)


def pieces(text: str) -> Iterator[re.Match[str] | regex.Match[str]]:
    """The pieces the token budget counts (see `truncate_tokens`), with their positions in `text`."""
    return (_ASCII_PIECE if text.isascii() else _PIECE).finditer(text)


def truncate_tokens(text: str, max_tokens: int) -> str:
    """`text` up to and including its `max_tokens`-th piece, original characters and spacing kept.

    A piece is a word (at most 32 word characters), one character of a script written without spaces, or one
    punctuation mark/symbol, each with its combining marks. A word or mark is at least one model token, so with a
    budget of the model's max_length the model's own truncation decides what it reads; unspaced scripts need more
    room, as one BPE token can hold several CJK or Thai characters (and English MiniLM a whole Thai word). Scanning
    stops one piece past the budget, so the cost is bounded by the budget, not the text's length.
    """
    if max_tokens <= 0:
        return ""
    if len(text) <= max_tokens:  # every piece is at least one character: cannot be over budget
        return text
    cut = len(text)
    for count, match in enumerate(pieces(text), start=1):
        if count == max_tokens:
            cut = match.end()
        elif count > max_tokens:  # only a text that is really over budget loses its tail (and trailing spaces)
            return text[:cut]
    return text


def render_path(source: Any, path: str) -> str:
    """Every value at `path` in `source`, rendered and joined with ", " ("" when there is none)."""
    return _render_list(list(resolve_path(source, path)), 0)


def flatten_source(source: Any) -> str:
    """The whole source as `key: value` lines, keys as dotted paths in source order, empty values skipped."""
    return "\n".join(_source_lines(source))


def _source_lines(source: Any) -> Iterator[str]:
    # Lazy, so a source with 100k keys is flattened only as far as the token budget can reach.
    return (f"{key}: {value}" if key else value for key, value in _flatten(source, "", 0))


def render_value(value: Any) -> str:
    """One value as text: strings verbatim, numbers/booleans as JSON, lists ", "-joined, objects `k: v; k2: v2`."""
    return _render(value, 0)


# --- config parsing -------------------------------------------------------------------------------------------


def _check_path(path: str, where: str) -> None:
    if not path or not path.strip():
        raise ValueError(f"{where}: empty field path")
    if path != path.strip():
        raise ValueError(f"{where}: field path {path!r} has leading or trailing spaces")
    if "" in path.split("."):
        raise ValueError(f"{where}: field path {path!r} has an empty part (leading, trailing or double dot)")


def _parse_template(template: str) -> list[list[_Segment]]:
    """Split a template into lines of literals and placeholders; bad braces are errors naming the position."""
    segments: list[_Segment] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "{" and template.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and template.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "}":
            raise ValueError(f"text.template: single '}}' at position {i} (write '}}}}' for a literal brace)")
        elif ch == "{":
            end = i + 1
            while end < n and template[end] not in "{}\n":
                end += 1
            if end >= n or template[end] != "}":
                raise ValueError(f"text.template: '{{' at position {i} is not closed on its line "
                                 "(write '{{{{' for a literal brace)")
            path = template[i + 1 : end].strip()
            _check_path(path, f"text.template placeholder at position {i}")
            if literal:
                segments.append("".join(literal))
                literal = []
            segments.append(_Placeholder(path))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        segments.append("".join(literal))
    if not any(isinstance(s, _Placeholder) for s in segments):
        raise ValueError("text.template: no {field} placeholder, every document would get the same text")
    lines: list[list[_Segment]] = [[]]
    for seg in segments:
        if isinstance(seg, _Placeholder):
            lines[-1].append(seg)
            continue
        first, *rest = seg.split("\n")
        if first:
            lines[-1].append(first)
        for part in rest:
            lines.append([part] if part else [])
    return lines


# --- template rendering ---------------------------------------------------------------------------------------


def _render_template(source: Any, lines: list[list[_Segment]]) -> str:
    # Each line renders to text, or to None when it held placeholders that all came back empty and nothing
    # else: such lines vanish, and the blank lines around them merge so no gap is left behind.
    rendered: list[str | None] = []
    for line in lines:
        parts: list[str] = []
        filled = False
        for seg in line:
            if isinstance(seg, _Placeholder):
                value = render_path(source, seg.path)
                filled = filled or bool(value.strip())
                parts.append(value)
            else:
                parts.append(seg)
        text = "".join(parts)
        has_placeholder = any(isinstance(seg, _Placeholder) for seg in line)
        rendered.append(None if has_placeholder and not filled and not text.strip() else text)
    out: list[str] = []
    i = 0
    while i < len(rendered):
        current_line = rendered[i]
        if current_line is not None and current_line.strip():
            out.append(current_line)
            i += 1
            continue
        # A run of blank and vanished lines: keep the longest blank stretch between vanished lines, so the
        # template's own spacing survives but a missing field adds none.
        runs, current, vanished = [], 0, False
        while i < len(rendered) and not (rendered[i] or "").strip():  # vanished (None) or blank
            if rendered[i] is None:
                vanished = True
                runs.append(current)
                current = 0
            else:
                current += 1
            i += 1
        runs.append(current)
        out.extend([""] * (max(runs) if vanished else sum(runs)))
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out)


# --- value access and rendering -------------------------------------------------------------------------------


def resolve_path(node: Any, path: str, *, index_lists: bool = False) -> Iterator[Any]:
    """The values at the dot path `path` below `node`, read one of two ways.

    A document's `_source` (the default) is read as Elasticsearch reads a field: arrays are walked element by
    element, and a key may itself contain dots (`{"a.b": 1}` is field `a.b`), so at each object every split of the
    remaining path is tried, nested form first; what lies deeper than MAX_DEPTH steps is not reached.
    With `index_lists` (a path into a request body, `query_path`) each segment is one key, and a numeric segment
    indexes an array (`query.bool.must.0`): one value at most, and no deeper than the path is long.
    """
    return _resolve(node, path.split("."), 0, index_lists)


def _resolve(node: Any, parts: list[str], depth: int, index_lists: bool) -> Iterator[Any]:
    if depth > MAX_DEPTH and not index_lists:
        return
    if not parts:
        yield node
    elif isinstance(node, Mapping):
        for cut in range(1, 2 if index_lists else len(parts) + 1):
            key = ".".join(parts[:cut])
            if key in node:
                yield from _resolve(node[key], parts[cut:], depth + 1, index_lists)
    elif index_lists:
        segment = parts[0]
        if isinstance(node, list) and segment.isascii() and segment.isdigit() and int(segment) < len(node):
            yield from _resolve(node[int(segment)], parts[1:], depth + 1, index_lists)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _resolve(item, parts, depth + 1, index_lists)


def _render(value: Any, depth: int) -> str:
    if value is None or depth > MAX_DEPTH:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return _scalar(value)
    if isinstance(value, (list, tuple)):
        return _render_list(value, depth)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {v}" if k else v for k, v in _flatten(value, "", depth))
    return _scalar(value)


def _render_list(values: Any, depth: int) -> str:
    return ", ".join(r for r in (_render(v, depth + 1) for v in values) if r.strip())


def _scalar(value: Any) -> str:
    """Non-string scalars as JSON writes them (true, 3.5); anything exotic via str(), or "" if even that fails."""
    try:
        if isinstance(value, (bool, int, float)):
            return json.dumps(value)
        return str(value)
    except Exception:  # e.g. ints past Python's digit limit, objects with a broken __str__
        return ""


def _is_container(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple))


def _flatten(node: Any, prefix: str, depth: int) -> Iterator[tuple[str, str]]:
    """(dotted key, rendered value) pairs for every non-empty leaf under `node`, in source order."""
    if depth > MAX_DEPTH:
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            name = str(key)
            yield from _flatten(value, f"{prefix}.{name}" if prefix else name, depth + 1)
    elif isinstance(node, (list, tuple)):
        # Scalars stay together on one line (`tags: a, b`); objects and nested arrays are flattened element by
        # element under the same key (`authors.name: A`, `authors.name: B`).
        scalars: list[Any] = []
        for item in node:
            if _is_container(item):
                if scalars:
                    yield from _flatten(scalars, prefix, depth)
                    scalars = []
                yield from _flatten(item, prefix, depth + 1)
            else:
                scalars.append(item)
        if scalars:
            text = _render_list(scalars, depth)
            if text.strip():
                yield prefix, text
    else:
        text = _render(node, depth)
        if text.strip():
            yield prefix, text
