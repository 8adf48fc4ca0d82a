"""Answers as Markdown: code blocks in a monospace block with a Copy link, a copy link per answer, no
HTML, and a streaming answer re-rendered by a timer rather than per token."""

import pytest
from app_fakes import PROMPT, FakeBackend, endless_events, markdown_events
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QGuiApplication, QTextCursor

from app.markdown import COPY_SCHEME, Segment, is_code_block, split_fences
from app.widgets import Transcript


def answer(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    return blocker.args[0]


def blocks(transcript):
    b = transcript.document().begin()
    while b.isValid():
        yield b
        b = b.next()


def links(transcript):
    """(text, href) of every link in the transcript, in order."""
    out = []
    for block in blocks(transcript):
        it = block.begin()
        while not it.atEnd():
            frag = it.fragment()
            if frag.charFormat().isAnchor():
                out.append((frag.text(), frag.charFormat().anchorHref()))
            it += 1
    return out


def test_fences_split_prose_from_code_even_while_a_fence_is_still_open():
    assert split_fences("Hi\n```python\nprint(1)\n```\nBye") == [
        Segment("Hi"), Segment("print(1)", "python"), Segment("Bye")]
    assert split_fences("Look:\n~~~\na\n\nb") == [Segment("Look:"), Segment("a\n\nb", "")]
    assert split_fences("inline ```not a fence``` here") == [Segment("inline ```not a fence``` here")]


def test_a_code_block_is_monospace_and_its_copy_link_copies_the_code(qtbot, make_window):
    window = make_window(FakeBackend(events=markdown_events))
    answer(qtbot, window)
    t = window.transcript
    code = [b for b in blocks(t) if is_code_block(b.blockFormat())]
    assert [b.text() for b in code] == ["print('hi')", "x = 1"]
    for block in code:
        cursor = QTextCursor(block)
        cursor.movePosition(QTextCursor.MoveOperation.Right)
        fmt = cursor.charFormat()
        assert fmt.fontFixedPitch() and "monospace" in fmt.fontFamilies()
    prose = next(b for b in blocks(t) if b.text().startswith("Use this"))
    assert not QTextCursor(prose).charFormat().fontFixedPitch()
    assert "```" not in t.toPlainText() and "python  Copy" in t.toPlainText()

    [(text, href), (msg_text, msg_href), (branch, _)] = links(t)  # the code's Copy, the answer's Copy and Branch
    assert text == msg_text == "Copy" and href.startswith(COPY_SCHEME + ":") and branch == "Branch"
    QGuiApplication.clipboard().clear()
    t.anchorClicked.emit(QUrl(href))
    assert QGuiApplication.clipboard().text() == "print('hi')\nx = 1"
    t.anchorClicked.emit(QUrl(msg_href))  # the answer's own Copy, on its stats line
    assert QGuiApplication.clipboard().text() == "".join(e.text for e in markdown_events())


def test_markdown_is_rendered_and_html_is_shown_as_text(qtbot):
    t = Transcript()
    qtbot.addWidget(t)
    t.begin_assistant("M", "**bold** and <b>tag</b> ![img](file:///etc/passwd)\n\n- one\n- two")
    t.end_answer()
    text = t.toPlainText()
    assert "bold and <b>tag</b>" in text and "**" not in text
    bold = next(b for b in blocks(t) if b.text().startswith("bold"))
    cursor = QTextCursor(bold)
    cursor.movePosition(QTextCursor.MoveOperation.Right)
    assert cursor.charFormat().fontWeight() > 500
    assert [b.text() for b in blocks(t) if b.textList() is not None] == ["one", "two"]


def test_streaming_re_renders_on_a_timer_not_per_token(qtbot):
    t = Transcript()
    qtbot.addWidget(t)
    t.begin_assistant("M")
    for i in range(500):
        t.append_text(f" w{i}")
    assert t.renders == 0  # tokens only queue up
    qtbot.waitUntil(lambda: t.renders == 1, timeout=1000)
    assert t.toPlainText().endswith("w498 w499")
    t.append_text(" last")
    t.end_answer()  # the end renders at once, whatever the timer
    assert t.renders == 2 and t.toPlainText().endswith("w499 last")
    assert Transcript.RENDER_MS >= 100  # at most ~10 renders a second


def test_a_streamed_answer_renders_a_few_times_not_once_per_token(qtbot, make_window):
    from itertools import islice

    window = make_window(FakeBackend(events=lambda: islice(endless_events(), 300), delay_s=0.001))
    answer(qtbot, window)
    renders = window.transcript.renders
    assert 1 <= renders < 60  # 300 tokens over well under a few seconds
    assert window.transcript.toPlainText().count("w299") == 1


ANSWERS = [
    "Intro with **bold** and `code`.\n\nSecond paragraph.\n\n# Heading\n\nText after it.\n\n- a\n- b\n\n  more of b\n\n"
    "After the list.\n\n1. one\n2. two\n\n3. three\n\n> a quote\n\n> more quote\n\nEnd.\n",
    "Here:\n\n```python\ndef f():\n    return 1\n```\n\nAnd then\n\n```\nplain\n```\nafter the fence\n\n| a | b |\n"
    "|---|---|\n| 1 | 2 |\n\nDone.\n",
    "> starts with a quote\n\nthen text\n\n    indented code\n\nnormal\n\n---\n\nAfter the rule\nSetext\n===\n\nx\n",
    "- item\n\n  ```js\n  let x = 1;\n  ```\n\n- item 2\n\nPara [link](http://e.x) and ~~strike~~.\n\n***\n\n"
    "* star list\n* two\n\nfin\n",
    # Reasoning models: thinking first (Qwen3), or only its end when the template opened it (DeepSeek-R1).
    "<think>\nThe user asks for **x**.\n\n- try a\n- try b\n</think>\n\nIntro **bold**.\n\n```py\nx = 1\n```\nEnd.\n",
    "Hmm, let me see.\n\nYes.\n</think>\n\n# Answer\n\nDone.\n",
]


@pytest.mark.parametrize("answer", ANSWERS, ids=["blocks", "fences", "rules", "nested", "thinking", "closing-tag"])
def test_a_streamed_answer_redrawn_from_its_stable_part_looks_like_one_drawn_whole(qapp, answer):
    """Each redraw draws only the tail after markdown.stable_prefix; after every complete line the
    transcript must be what drawing the whole text so far gives, and at the end exactly that."""
    import random

    rng, streamed, body = random.Random(0), Transcript(), ""
    streamed.begin_assistant("M")
    while len(body) < len(answer):
        piece = answer[len(body):len(body) + rng.randint(1, 7)]
        body += piece
        streamed.append_text(piece)
        streamed._render()  # a timer tick
        if body.endswith("\n"):  # (mid-line, Qt's importer reads a half-typed "1." or "- " its own way)
            whole = Transcript()
            whole.begin_assistant("M", body)
            assert streamed.toHtml() == whole.toHtml(), repr(body[-60:])
    streamed.end_answer()
    whole = Transcript()
    whole.begin_assistant("M", answer)
    whole.end_answer()
    assert streamed.toHtml() == whole.toHtml() and streamed.copies == whole.copies


def test_a_long_answer_is_redrawn_from_its_tail_not_from_its_start(qapp, monkeypatch):
    """A whole re-render per redraw made a long answer cost its length squared (and left Qt a format per
    redraw per list item: tens of MB for one long answer)."""
    from app import markdown

    drawn = []
    real = markdown.render
    monkeypatch.setattr(markdown, "render", lambda cursor, text, *a: (drawn.append(len(text)), real(cursor, text, *a)))
    view = Transcript()
    view.begin_assistant("M")
    paragraph = "A sentence of the answer, and another one after it. " * 3 + "\n\n"
    for _ in range(300):
        view.append_text(paragraph)
        view._render()
    total = 300 * len(paragraph)
    assert sum(drawn) < 3 * total  # each paragraph drawn about twice (as tail, then for good), not 150 times
    view.end_answer()  # and once more whole, at the end
    assert drawn[-1] == total


_WORDS = "alpha beta **gamma** `delta` epsilon _zeta_ eta [link](http://x.y) theta".split()
_BLOCKS = [
    lambda r: _para(r), lambda r: "\n".join(f"- {_para(r)}" for _ in range(r.randint(1, 3))),
    lambda r: "\n".join(f"{i + 1}. {_para(r)}" for i in range(r.randint(1, 3))), lambda r: f"- {_para(r)}\n  - {_para(r)}",
    lambda r: f"> {_para(r)}", lambda r: f"# {_para(r)}", lambda r: "```py\nx = 1\ny = 2\n```", lambda r: "---",
    lambda r: "| a | b |\n|---|---|\n| 1 | 2 |", lambda r: f"{_para(r)}\n{_para(r)}", lambda r: f"    code {_para(r)}",
    lambda r: f"{_para(r)}\n===", lambda r: "~~~\nraw\n~~~", lambda r: f"* {_para(r)}\n\n  {_para(r)}",
]


def _para(r):
    return " ".join(r.choice(_WORDS) for _ in range(r.randint(2, 12)))


def test_random_answers_streamed_look_like_them_drawn_whole(qapp):
    """Random answers of paragraphs, lists, quotes, headings, fences, rules, tables, indented code and setext
    headings, streamed in random pieces: after every complete line, the same as drawn whole (this found a
    prose segment that starts with "---" drawn as front matter when cut before its fence's newline)."""
    import random

    for seed in [*range(80), 408]:  # (408: the front matter case)
        r = random.Random(seed)
        answer = "".join(r.choice(_BLOCKS)(r) + r.choice(["\n\n", "\n\n", "\n", "\n\n\n"]) for _ in range(r.randint(2, 7)))
        streamed, body = Transcript(), ""
        streamed.begin_assistant("M")
        while len(body) < len(answer):
            piece = answer[len(body):len(body) + r.randint(1, 9)]
            body += piece
            streamed.append_text(piece)
            streamed._render()
            if body.endswith("\n"):
                whole = Transcript()
                whole.begin_assistant("M", body)
                assert streamed.toHtml() == whole.toHtml(), (seed, body[-80:])


def test_an_answer_opening_with_a_rule_is_not_taken_for_front_matter(qapp):
    """Qt's importer reads a "---" line opening the Markdown as YAML front matter and hid the text up to the
    next "---"; a model means a rule."""
    view = Transcript()
    view.begin_assistant("M", "---\nHello there\n---\nGeneral Kenobi")
    view.end_answer()
    assert "Hello there" in view.toPlainText() and "General Kenobi" in view.toPlainText()


def test_split_thinking():
    from app.thinking import answer_text, split_thinking

    t = split_thinking("<think>\nhm\n</think>\n\nParis.")
    assert (t.text, t.done, t.answer("<think>\nhm\n</think>\n\nParis.")) == ("hm", True, "Paris.")
    t = split_thinking("<think>\nstill going")
    assert (t.text, t.done, t.answer("<think>\nstill going")) == ("still going", False, "")
    assert answer_text("reasoning\n</think>\n\nParis.") == "Paris."  # the template opened it
    assert split_thinking("Paris.").text is None and answer_text("Paris.") == "Paris."
    assert split_thinking("Write <think> in HTML? No.").text is None  # quoted, not a reasoning block
    # Any model may write about the closing tag; only one on a line of its own closes a thought the
    # template opened (QwQ, the R1 distills), once the stream has reached it.
    for quoting in ("Close it with `</think>` and go on.", "The </think> tag\nends a thought.",
                    "Tags:\n</think> closes it"):
        assert split_thinking(quoting).text is None and answer_text(quoting) == quoting
    assert split_thinking("hm \n  </think>  \r\nParis.").text == "hm"
    assert (split_thinking("still thinking\n</think>").text, answer_text("still thinking\n</think>")) == \
        ("still thinking", "")
    assert split_thinking("Mention `</think>`, then\n</think>\nParis.").text == "Mention `</think>`, then"


THOUGHT = "<think>\nRecall the atlas:\nParis it is.\n</think>\n\nIt is **Paris**."


def thinking_events():
    from engine.events import StepEvent

    pieces = [THOUGHT[i:i + 9] for i in range(0, len(THOUGHT), 9)]
    return [StepEvent(i, (i,), p, finish_reason="eos" if i == len(pieces) - 1 else None)
            for i, p in enumerate(pieces)]


def test_thinking_is_a_line_under_the_answer_shown_on_request_and_copy_leaves_it_out(qtbot, make_window):
    import threading

    gate = threading.Event()
    window = make_window(FakeBackend(events=thinking_events, gate=gate))
    t = window.transcript
    qtbot.keyClicks(window.prompt, PROMPT)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "Thinking …" in t.toPlainText(), timeout=5000)  # while it thinks: what so far
    assert "<think>" not in t.toPlainText()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    text = t.toPlainText()
    assert "Thought · 6 words · Show" in text and "It is Paris." in text
    assert "atlas" not in text and "think>" not in text
    [(show, href), (_copy, copy_href), _branch] = links(t)
    assert show == "Show"
    QGuiApplication.clipboard().clear()
    t.anchorClicked.emit(QUrl(copy_href))
    assert QGuiApplication.clipboard().text() == "It is **Paris**."  # the answer, not the thinking

    t.anchorClicked.emit(QUrl(href))  # Show: every answer's thinking, kept across starts
    text = t.toPlainText()
    assert "Thought · 6 words · Hide" in text and "Recall the atlas:\nParis it is." in text
    assert window.history[-1]["content"] == THOUGHT  # the model's own template decides what it sees again
    window.close()
    again = make_window()
    assert again.transcript.show_thinking and "Recall the atlas" in again.transcript.toPlainText()
    again.transcript.anchorClicked.emit(QUrl(href))  # Hide
    assert "Recall the atlas" not in again.transcript.toPlainText()
    assert "Thought · 6 words · Show" in again.transcript.toPlainText()


def test_an_answer_cut_while_thinking_says_what_to_do(qapp):
    from app.turns import end_answer

    t = Transcript()
    t.begin_assistant("M", "<think>\nfirst, the")
    end_answer(t, "length", {}, "<think>\nfirst, the")
    assert "[cut at the length limit while still thinking: Continue goes on" in t.toPlainText()
    t.begin_assistant("M", "Plain answer")
    end_answer(t, "length", {}, "Plain answer")
    assert t.toPlainText().endswith("Plain answer [cut at the length limit]")


def test_markdown_export_quotes_the_thinking_above_the_answer():
    from app.conversations import Conversation, Message
    from app.export import to_markdown

    conv = Conversation(1, "Capitals", 0.0, 0.0, "")
    md = to_markdown(conv, [Message(1, "user", "Capital?", 0.0, None, True),
                            Message(2, "assistant", THOUGHT, 0.0, {"model": "Qwen3-8B"}, True)])
    assert "## Qwen3-8B\n\n> *Thinking*\n>\n> Recall the atlas:\n> Paris it is.\n\nIt is **Paris**.\n" in md
    assert "<think>" not in md  # a Markdown viewer would take it for HTML and show nothing


def test_an_empty_thought_draws_nothing(qapp):
    from app.conversations import Conversation, Message
    from app.export import to_markdown

    text = "<think>\n\n</think>\n\nParis."  # Qwen3 after /no_think
    t = Transcript()
    t.begin_assistant("M", text)
    t.end_answer()
    assert t.toPlainText() == "M\nParis."
    md = to_markdown(Conversation(1, "t", 0.0, 0.0, ""), [Message(1, "assistant", text, 0.0, {"model": "M"}, True)])
    assert "## M\n\nParis.\n" in md and "think" not in md
