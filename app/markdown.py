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
from .thinking import Thinking

EARLIER_SCHEME = "subspec-earlier"  # the transcript's "show the earlier messages" link
THINKING_SCHEME = "subspec-thinking"  # an answer's "Show"/"Hide" of its thinking
VERSION_SCHEME = "subspec-version"  # an answer's ‹ and ›: "subspec-version:<message id>:<-1 or 1>"
BRANCH_SCHEME = "subspec-branch"  # an answer's "Branch": "subspec-branch:<message id>"
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


# A line that may continue the block above it across a blank line: a list item, a quote, a table row, or
# anything indented (a list item's next paragraph, indented code).
CONTINUES = re.compile(r"^(?:[ \t]|[-*+](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)|>|\|)")
# A thematic break: insertMarkdown draws none as the last block of a piece, and two as the first.
RULE = re.compile(r"^ {0,3}(?:[-*_][ \t]*){3,}$")


def stable_prefix(text: str, start: int = 0) -> tuple[int, bool]:
    """How much of a streaming answer later text cannot change as `render` draws it: the longest prefix,
    from `start` (itself one) on, that ends where a new top-level block begins on a complete line. Such a
    place: a fence opening (the prose before it is a segment of its own), the line after a fence closing,
    or a line after a blank line that cannot continue the block above (CONTINUES). Rendering the prefix
    and the rest apart draws what rendering them together does (render's `continues`), so a streaming
    answer re-renders only its tail (a whole re-render per redraw made a long answer's cost grow with its
    square). Not seen: a link reference definition ("[1]: http://...") coming after its use, which the
    whole render at the answer's end resolves. Returns (its length, whether the rest continues a prose
    segment)."""
    best, offset, fence, blank_before, prose, continues = start, start, None, False, False, False
    rule = False  # the last text line was a thematic break
    lines = text[start:].split("\n")
    for line in lines[:-1]:  # the last line may still grow: never a boundary
        if fence is None:
            opening = FENCE.match(line)
            if opening:
                best, continues, fence, prose = offset, False, opening.group(1), False
            elif (blank_before and prose and not rule and line.strip() and not CONTINUES.match(line)
                  and not RULE.match(line)):
                # (Not at a segment's first text: a leading blank line there draws an empty block.)
                best, continues = offset, True
            blank_before = not line.strip()
            if line.strip():
                prose, rule = True, bool(RULE.match(line))
        elif line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence, blank_before = None, False
            best, continues = offset + len(line) + 1, False  # the code block is complete
        offset += len(line) + 1
    return best, continues


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


def _keep_first_quote(doc: QTextDocument, start: int, text: str) -> None:
    """insertMarkdown merges the first block it makes into the block the cursor is in, which keeps that
    block's format: a quote that opens a paragraph lost its indent and read as plain text. The quote's own
    format, as Qt's importer makes it, is put back."""
    if not text.lstrip().startswith(">"):
        return
    scratch = QTextDocument()
    scratch.setMarkdown(text, FEATURES)
    QTextCursor(doc.findBlock(start)).setBlockFormat(scratch.begin().blockFormat())


def _no_front_matter(text: str) -> str:
    """Qt's importer reads a "---" line opening the Markdown as YAML front matter and hides what follows up
    to the next such line (and, once it has, reads later imports into the same document differently). A
    model means a thematic break: "***" is the same one."""
    lead = len(text) - len(text.lstrip("\n"))
    first, newline, rest = text[lead:].partition("\n")
    if first.startswith("---") and not first.strip("- \t"):
        return text[:lead] + "***" + newline + rest
    return text


def _as_a_later_block(doc: QTextDocument, start: int, text: str) -> None:
    """insertMarkdown gives its first block the format of the block it is inserted into (see
    _keep_first_quote); text continuing a prose segment gets, as there, the format Qt's importer gives a
    block that follows another (a paragraph's spacing, a heading's level)."""
    scratch = QTextDocument()
    scratch.setMarkdown("x\n\n" + text.lstrip("\n").split("\n\n", 1)[0], FEATURES)
    QTextCursor(doc.findBlock(start)).setBlockFormat(scratch.begin().next().blockFormat())


def _shade_inline_code(doc: QTextDocument, start: int, end: int) -> None:
    """Inline `code` comes from Qt's importer in a fixed-pitch font only: given the code blocks' shade too,
    so it stands out from prose in both appearances."""
    spans = []  # gathered first: changing a format while walking the fragments would change the walk
    block = doc.findBlock(start)
    while block.isValid() and block.position() < end:
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            if fragment.charFormat().fontFixedPitch():
                spans.append((fragment.position(), fragment.length()))
            it += 1
        block = block.next()
    shaded = QTextCharFormat()
    shaded.setBackground(QColor(theme.colors().code_background))
    for position, length in spans:
        cursor = QTextCursor(doc)
        cursor.setPosition(position)
        cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
        cursor.mergeCharFormat(shaded)


def render(cursor: QTextCursor, text: str, copies: list[str], continues: bool = False) -> None:
    """Inserts `text` at `cursor` (the document's end); each code block's text is appended to `copies`
    and its "Copy" link points at that entry. `continues`: `text` goes on a prose segment drawn before it
    (stable_prefix), so its first block is not the first of its Markdown."""
    for i, segment in enumerate(split_fences(text)):
        if not segment.is_code:
            _fresh_block(cursor, QTextBlockFormat())
            start = cursor.position()
            cursor.insertMarkdown(_no_front_matter(segment.text), FEATURES)
            _keep_first_quote(cursor.document(), start, segment.text)
            if continues and i == 0:
                _as_a_later_block(cursor.document(), start, segment.text)
            _shade_inline_code(cursor.document(), start, cursor.position())
            continue
        label = _note_line(cursor, top=4)
        if segment.language:
            cursor.insertText(segment.language + "  ", label)
        copies.append(segment.text)
        cursor.insertText("Copy", link_format(f"{COPY_SCHEME}:{len(copies) - 1}"))
        cursor.insertBlock(_code_block_format(), code_char_format())
        # insertText turns "\n" into new blocks, each inheriting the code block's formats.
        cursor.insertText(segment.text, code_char_format())


def _note_line(cursor: QTextCursor, top: int = 0, bottom: int = 0) -> QTextCharFormat:
    """A fresh block for a small line of the answer's own (a code block's language and Copy, the thinking's
    header); returns the note color's format to write it in."""
    header = QTextBlockFormat()
    header.setTopMargin(top)
    header.setBottomMargin(bottom)
    _fresh_block(cursor, header)
    label = QTextCharFormat()
    label.setForeground(QColor(theme.colors().note))
    return label


def render_thinking(cursor: QTextCursor, thinking: Thinking, shown: bool) -> None:
    """A reasoning model's thinking, above its answer: while it goes on, "Thinking …" and the text so far;
    once over, one line ("Thought · N words · Show") with the text under it only when `shown` (the
    thinking of a long answer is often longer than the answer). An empty thought (Qwen3 told /no_think
    writes one) draws nothing."""
    if thinking.done and not thinking.text:
        return
    label = _note_line(cursor, bottom=2)
    label.setFontItalic(True)
    if not thinking.done:
        cursor.insertText("Thinking …", label)
    else:
        words = len(thinking.text.split())
        cursor.insertText(f"Thought · {words} word{'' if words == 1 else 's'} · ", label)
        cursor.insertText("Hide" if shown else "Show", link_format(f"{THINKING_SCHEME}:"))
    if thinking.text and (shown or not thinking.done):
        body = QTextBlockFormat()
        body.setLeftMargin(12)  # (each line a block: a blank line between paragraphs is one line high)
        text = QTextCharFormat()
        text.setForeground(QColor(theme.colors().stats))
        cursor.insertBlock(body, text)
        # Plain text: half-written Markdown of a thought is not worth a re-layout per token.
        cursor.insertText(thinking.text, text)
        last = cursor.blockFormat()
        last.setBottomMargin(8)  # (the answer's first block takes a format of its own: the space goes here)
        cursor.setBlockFormat(last)
    cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
