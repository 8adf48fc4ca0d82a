"""Assistant text as Markdown: prose through Qt's own Markdown importer, fenced code blocks drawn here.

Fences are split out by hand rather than left to Qt so that each code block gets a "Copy" link and so
that a fence still open mid-stream already shows as code instead of as a stray run of backticks.
Raw HTML is off (MarkdownNoHTML): a model's output must never become markup or load anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PySide6.QtGui import (QColor, QFont, QFontDatabase, QTextBlockFormat, QTextCharFormat, QTextCursor,
                           QTextDocument)

from . import theme

COPY_SCHEME = "subspec-copy"  # an href scheme of our own, so a link in model text cannot reach the shell
FEATURES = QTextDocument.MarkdownFeature.MarkdownDialectGitHub | QTextDocument.MarkdownFeature.MarkdownNoHTML
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
CODE_BLOCK = "code-block"  # a block property marking code lines, so notes are not appended inside them


@dataclass(frozen=True)
class Segment:
    text: str
    language: str | None = None  # None: prose; "" or a name: a fenced code block

    @property
    def is_code(self) -> bool:
        return self.language is not None


def split_fences(text: str) -> list[Segment]:
    """Prose and fenced code, in order. An unclosed fence runs to the end (the answer is still coming)."""
    out: list[Segment] = []
    prose: list[str] = []
    code: list[str] | None = None
    fence, language = "", ""
    for line in text.split("\n"):
        if code is None:
            m = FENCE.match(line)
            if m:
                if prose:
                    out.append(Segment("\n".join(prose)))
                    prose = []
                fence, language, code = m.group(1), m.group(2), []
            else:
                prose.append(line)
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            out.append(Segment("\n".join(code), language))
            code = None
        else:
            code.append(line)
    if code is not None:
        out.append(Segment("\n".join(code), language))
    elif prose:
        out.append(Segment("\n".join(prose)))
    return [s for s in out if s.is_code or s.text.strip()]


def code_char_format() -> QTextCharFormat:
    f = QTextCharFormat()
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    f.setFontFamilies([font.family(), "monospace"])
    f.setFontFixedPitch(True)
    f.setFontStyleHint(QFont.StyleHint.Monospace)
    return f


def link_format(href: str) -> QTextCharFormat:
    f = QTextCharFormat()
    f.setAnchor(True)
    f.setAnchorHref(href)
    f.setForeground(QColor(theme.colors().link))
    f.setFontUnderline(True)
    return f


def _code_block_format() -> QTextBlockFormat:
    f = QTextBlockFormat()
    f.setBackground(QColor(theme.colors().code_background))
    f.setNonBreakableLines(True)
    f.setLeftMargin(6)
    f.setRightMargin(6)
    f.setProperty(QTextBlockFormat.Property.UserProperty, CODE_BLOCK)
    return f


def is_code_block(block_format: QTextBlockFormat) -> bool:
    return block_format.property(QTextBlockFormat.Property.UserProperty) == CODE_BLOCK


def _fresh_block(cursor: QTextCursor, fmt: QTextBlockFormat) -> None:
    """Writes into the current block when it is still empty, else starts one; either way with `fmt`
    (the emptied block of a previous render may still carry a list's or a code block's format)."""
    if cursor.block().length() > 1:
        cursor.insertBlock(fmt, QTextCharFormat())
    else:
        text_list = cursor.currentList()
        if text_list is not None:
            text_list.remove(cursor.block())
        cursor.setBlockFormat(fmt)
        cursor.setCharFormat(QTextCharFormat())


def render(cursor: QTextCursor, text: str, copies: list[str]) -> None:
    """Inserts `text` at `cursor` (the document's end); each code block's text is appended to `copies`
    and its "Copy" link points at that entry."""
    for segment in split_fences(text):
        if not segment.is_code:
            _fresh_block(cursor, QTextBlockFormat())
            cursor.insertMarkdown(segment.text, FEATURES)
            continue
        header = QTextBlockFormat()
        header.setTopMargin(4)
        _fresh_block(cursor, header)
        label = QTextCharFormat()
        label.setForeground(QColor(theme.colors().note))
        if segment.language:
            cursor.insertText(segment.language + "  ", label)
        copies.append(segment.text)
        cursor.insertText("Copy", link_format(f"{COPY_SCHEME}:{len(copies) - 1}"))
        cursor.insertBlock(_code_block_format(), code_char_format())
        # insertText turns "\n" into new blocks, each inheriting the code block's formats.
        cursor.insertText(segment.text, code_char_format())
