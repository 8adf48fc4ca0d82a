"""Light and dark appearance: every color the app picks reads on the palette it is drawn on, and a switch
(View > Appearance, or the system's own under "Follow the system") restyles what is already on screen."""

import threading

import pytest
from app_fakes import PROMPT, FakeBackend, markdown_events
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QPalette, QTextCursor
from PySide6.QtWidgets import QApplication

from app import theme
from app.markdown import is_code_block
from app.models_panel import Badge
from app.widgets import NoticeBar


@pytest.fixture(autouse=True)
def back_to_system():
    yield
    theme.apply("system")  # one QApplication serves the whole suite


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colors (4.5 is the minimum for body text)."""
    def luminance(color):
        channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b_ = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b_
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def role(name: str) -> str:
    return QApplication.palette().color(getattr(QPalette.ColorRole, name)).name()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_color_we_choose_reads_on_what_it_is_drawn_on(qapp, scheme):
    theme.apply(scheme)
    c = theme.colors()
    assert c.dark == (scheme == "dark") == theme.is_dark()
    for name in ("user", "assistant", "note", "error", "stats", "link"):  # the transcript's text
        assert contrast(getattr(c, name), role("Base")) >= 4.5, name
    # A code block's text is the palette's (a dark system's light text on a light block was unreadable).
    assert contrast(role("Text"), c.code_background) >= 7
    for tone in theme.TONES:  # labels in the panels, on the window's color and on a card's
        assert contrast(getattr(c, tone), role("Window")) >= 4.5 and contrast(getattr(c, tone), role("Base")) >= 4.5
        assert contrast(getattr(c, tone), c.card_background) >= 4.5, tone
    assert contrast(role("WindowText"), c.notice_background) >= 7
    assert contrast(c.plot_text, c.plot_background) >= 4.5
    for kind, (fg, bg) in c.badges.items():
        assert contrast(fg, bg) >= 4.5, kind


def answer(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def drawn_colors(window) -> dict:
    """What the transcript and the panels are drawn with right now."""
    doc = window.transcript.document()
    code = next(b for b in _blocks(doc) if is_code_block(b.blockFormat()))
    you = doc.find("You")
    return {"code": code.blockFormat().background().color().name(),
            "you": QTextCursor(you).charFormat().foreground().color().name(),
            "plot": window.stats_dock.plots[0].backgroundBrush().color().name()}


def _blocks(doc):
    b = doc.begin()
    while b.isValid():
        yield b
        b = b.next()


def choose(window, scheme):
    window.findChild(QAction, f"appearance_{scheme}").trigger()


def test_view_appearance_restyles_the_open_conversation_and_is_kept(qtbot, make_window):
    window = make_window(FakeBackend(events=markdown_events))
    answer(qtbot, window)
    light = drawn_colors(window)
    assert light == {"code": theme.LIGHT.code_background, "you": theme.LIGHT.user,
                     "plot": theme.LIGHT.plot_background}
    notice, badge = NoticeBar(), Badge("Fits your GPU", "good")  # styled widgets follow too
    choose(window, "dark")
    assert theme.is_dark() and window.settings.value(theme.SETTING) == "dark"
    assert drawn_colors(window) == {"code": theme.DARK.code_background, "you": theme.DARK.user,
                                    "plot": theme.DARK.plot_background}
    assert theme.DARK.notice_background in notice.styleSheet()
    assert theme.DARK.badges["good"][1] in badge.styleSheet()
    assert "print('hi')" in window.transcript.toPlainText()  # the same conversation, redrawn
    second = make_window(FakeBackend())  # the choice is kept for the next start
    assert theme.is_dark() and second.findChild(QAction, "appearance_dark").isChecked()
    choose(window, "system")  # offscreen, the system's palette is light
    assert not theme.is_dark() and drawn_colors(window) == light
    # Not pinned to a palette of ours: Qt keeps following the system's light/dark changes.
    assert not QApplication.testAttribute(Qt.ApplicationAttribute.AA_SetPalette)
    assert theme.LIGHT.notice_background in notice.styleSheet()


def test_a_switch_mid_answer_redraws_once_the_answer_is_done(qtbot, make_window):
    gate = threading.Event()
    window = make_window(FakeBackend(events=markdown_events, gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    choose(window, "dark")
    assert window.busy and window.transcript.toPlainText().count("You") == 1  # not cleared under the answer
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    assert drawn_colors(window)["code"] == theme.DARK.code_background
    assert drawn_colors(window)["you"] == theme.DARK.user


def test_a_system_switch_restyles_when_following_the_system(qtbot, make_window):
    """Under "Follow the system" the OS changes the palette itself (a dark mode turned on at sunset); the
    window hears of it and restyles."""
    window = make_window(FakeBackend(events=markdown_events))
    answer(qtbot, window)
    QApplication.setPalette(theme.dark_palette())  # what Qt does when the OS goes dark
    qtbot.waitUntil(lambda: drawn_colors(window)["code"] == theme.DARK.code_background, timeout=5000)


def test_a_bad_saved_appearance_falls_back_to_the_system(qtbot, make_window):
    window = make_window(FakeBackend())
    window.settings.setValue(theme.SETTING, "sepia")
    again = make_window(FakeBackend())
    assert again.findChild(QAction, "appearance_system").isChecked() and not theme.is_dark()
    with pytest.raises(ValueError, match="appearance must be one of"):
        theme.apply("sepia")


def test_quotes_inline_code_and_links_look_like_what_they_are(qtbot, make_window):
    """Found looking at the screens: a quote opening an answer lost its indent (insertMarkdown merges its first
    block into the one it starts in), inline code was marked by its font alone, and Markdown links were
    Fusion's pure blue beside our own Copy links."""
    from app.widgets import Transcript

    theme.apply("dark")
    t = Transcript()
    t.begin_assistant("M", "> a quote first\n\nthen `code` and [a link](https://example.org)")
    t.end_answer()
    doc = t.document()
    quote = doc.find("a quote first")
    assert QTextCursor(quote).blockFormat().leftMargin() > 0
    code = doc.find("code")
    assert code.charFormat().fontFixedPitch()
    assert code.charFormat().background().color().name() == theme.DARK.code_background
    assert t.palette().color(QPalette.ColorRole.Link).name() == theme.DARK.link
    theme.apply("light")
    t.restyle()  # (the window calls this when the appearance changes)
    assert t.palette().color(QPalette.ColorRole.Link).name() == theme.LIGHT.link


def test_graph_lines_follow_the_appearance(qtbot, make_window):
    window = make_window(FakeBackend())
    pen = window.stats_dock.curves[0].opts["pen"]
    assert pen.color().name() == theme.LIGHT.series[0]
    choose(window, "dark")
    assert window.stats_dock.curves[0].opts["pen"].color().name() == theme.DARK.series[0]
    for c in (theme.LIGHT, theme.DARK):
        for line in c.series:
            assert contrast(line, c.plot_background) >= 3, line  # a graph line (WCAG: 3 for graphics)


def test_an_error_line_survives_a_redraw_put_off_until_the_request_ended(qtbot, make_window, dialogs):
    """The appearance changed mid-answer and the answer failed: the redraw (from the store) comes before the
    error line, which is not stored, instead of wiping it."""
    from engine.errors import SubspecError

    gate = threading.Event()
    window = make_window(FakeBackend(events=markdown_events, gate=gate, fail_on_call={1}, fail_after=2,
                                     fail_error=SubspecError("the GPU fell over")))
    gate.set()
    answer(qtbot, window)
    gate.clear()  # the regenerate holds after its first token
    with qtbot.waitSignal(window.host.token, timeout=5000):
        window.chat_actions.regenerate.click()
    choose(window, "dark")
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        gate.set()
    assert "the GPU fell over" in window.transcript.toPlainText()
    assert drawn_colors(window)["code"] == theme.DARK.code_background


def test_an_error_line_on_screen_survives_a_switch_while_idle(qtbot, make_window, dialogs):
    """A redraw comes from the store, which does not hold error lines: those after the last turn come back."""
    from app_fakes import CONTEXT_ERROR

    window = make_window(FakeBackend(events=markdown_events, fail_on_call={1}))
    answer(qtbot, window)
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        qtbot.keyClicks(window.prompt, "x" * 10)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert CONTEXT_ERROR in window.transcript.toPlainText()
    choose(window, "dark")
    assert CONTEXT_ERROR in window.transcript.toPlainText()
    assert window.transcript.toPlainText().count("\N{WARNING SIGN}") == 1


def strongest_contrast(icon, background: str) -> float:
    """The highest contrast of any opaque-enough pixel of `icon` (at 16 px) against `background`."""
    from PySide6.QtGui import QColor

    image, best, back = icon.pixmap(16, 16).toImage(), 1.0, QColor(background)
    for y in range(image.height()):
        for x in range(image.width()):
            pixel = image.pixelColor(x, y)
            if pixel.alphaF() < 0.5:
                continue
            a = pixel.alphaF()  # over the background, as drawn
            over = QColor.fromRgbF(*(a * getattr(pixel, c + "F")() + (1 - a) * getattr(back, c + "F")()
                                     for c in ("red", "green", "blue")))
            best = max(best, contrast(over.name(), background))
    return best


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_docks_float_and_close_buttons_read_on_the_window(qtbot, make_window, scheme):
    """Fusion draws them in fixed grays, all but invisible on a dark window (3:1: WCAG's minimum for
    controls)."""
    from PySide6.QtWidgets import QAbstractButton

    window = make_window(FakeBackend())
    choose(window, scheme)
    for dock in (window.stats_dock, window.hardware_dock, window.models_dock):
        buttons = [b for b in dock.findChildren(QAbstractButton) if b.parent() is dock]
        assert len(buttons) == 2, dock.objectName()  # float and close
        for button in buttons:
            assert strongest_contrast(button.icon(), role("Window")) >= 3, (dock.windowTitle(), scheme)
    # Only the title bar: the dock's contents keep the application's style (its spin boxes, its metrics).
    assert window.hardware_dock.widget().style() is QApplication.style()
    choose(window, "system")  # back: the dock follows (offscreen, the system's style is Fusion too)
    assert strongest_contrast(window.stats_dock.findChildren(QAbstractButton)[0].icon(), role("Window")) >= 3
