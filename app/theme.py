"""Light and dark appearance: every color the app chooses itself comes from here.

Qt draws its own widgets from the palette, which follows the system's dark mode on Windows and macOS; the
colors the app adds (names in the transcript, code blocks, notes, badges, the notice bar, the graphs) must
follow it too, or a dark system gets light code blocks under light text. So the app never names a color
where it uses one: text formats ask `colors()` when they are made, styled widgets get their style sheet
through `style()` (and again from here when the appearance changes), and whatever drew with the old
colors (the transcript, the graphs) listens to `notifier.changed` and draws again.

Appearance is "system" (follow the OS: Qt's own style and palette), "light" or "dark" (Qt's Fusion style
with a palette of ours, the same on every platform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QDockWidget, QProxyStyle, QStyle, QWidget

SCHEMES = ("system", "light", "dark")
TONES = ("muted", "error", "warning", "ok")
SETTING = "appearance"  # QSettings key


@dataclass(frozen=True)
class Colors:
    dark: bool
    user: str  # "You" in the transcript
    assistant: str  # the model's name in the transcript
    note: str  # notes under an answer, a code block's language
    error: str
    stats: str  # the grey line under an answer
    link: str
    code_background: str
    muted: str  # secondary text in the panels
    warning: str  # "editing your last message", a measurement under way
    ok: str
    notice_background: str
    notice_border: str
    card_border: str
    plot_background: str
    plot_text: str
    series: tuple  # graph lines, in order (the stats plots, then the GPUs of the hardware graphs)
    card_background: str
    badges: dict  # kind -> (text, background)


LIGHT = Colors(
    dark=False, user="#1f5fa8", assistant="#2e7d32", note="#707070", error="#c62828", stats="#707070",
    link="#1f5fa8", code_background="#eceff3", muted="#5f6368", warning="#7a5f00", ok="#1b5e20",
    notice_background="#fff6d5", notice_border="#e6d38a", card_border="#d3d6db", plot_background="#ffffff",
    plot_text="#333333", card_background="#ffffff",
    series=("#1f5fa8", "#b35900", "#1e7b34", "#c62828", "#6a3fa0", "#7a4a2e", "#a8206f", "#5f6368"),
    badges={"good": ("#1b5e20", "#e3f2e5"), "cpu": ("#7a5200", "#fdf1d8"), "bad": ("#8e1b1b", "#fbe3e3"),
            "neutral": ("#455a64", "#eceff1"), "info": ("#0d47a1", "#e3ecfa")})

DARK = Colors(
    dark=True, user="#82b1ff", assistant="#81c784", note="#a6a6a6", error="#ff8a80", stats="#9e9e9e",
    link="#8ab4f8", code_background="#2f3237", muted="#a8adb3", warning="#e6c35c", ok="#81c784",
    notice_background="#3a3322", notice_border="#7a6a30", card_border="#4a4e54", plot_background="#1e1f22",
    plot_text="#d0d0d0", card_background="#303338",
    series=("#6fa8ff", "#ffa657", "#7ee787", "#ff7b72", "#d2a8ff", "#e3b27a", "#ff8ad8", "#b0b4b8"),
    badges={"good": ("#a5d6a7", "#1f3a22"), "cpu": ("#ffd27f", "#3d3115"), "bad": ("#ff9e9e", "#4a1f1f"),
            "neutral": ("#c0ccd2", "#2e363b"), "info": ("#9cc7ff", "#1b2b47")})


def is_dark(palette: QPalette | None = None) -> bool:
    """Whether `palette` (the application's) draws light text on dark windows."""
    palette = palette or QApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def colors() -> Colors:
    return DARK if is_dark() else LIGHT


def dark_palette() -> QPalette:
    p = QPalette()
    role, group = QPalette.ColorRole, QPalette.ColorGroup
    for r, c in ((role.Window, "#2b2d30"), (role.WindowText, "#e6e6e6"), (role.Base, "#1e1f22"),
                 (role.AlternateBase, "#26282b"), (role.ToolTipBase, "#2b2d30"), (role.ToolTipText, "#e6e6e6"),
                 (role.PlaceholderText, "#8c8c8c"), (role.Text, "#e6e6e6"), (role.Button, "#35373b"),
                 (role.ButtonText, "#e6e6e6"), (role.BrightText, "#ff6e6e"), (role.Light, "#4a4d52"),
                 (role.Midlight, "#3d4045"), (role.Mid, "#2f3236"), (role.Dark, "#1a1b1e"),
                 (role.Shadow, "#000000"), (role.Highlight, "#3d6fb6"), (role.HighlightedText, "#ffffff"),
                 (role.Link, "#8ab4f8"), (role.LinkVisited, "#c58af9")):
        p.setColor(r, QColor(c))
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(group.Disabled, r, QColor("#8a8a8a"))
    p.setColor(group.Disabled, role.Base, QColor("#26282b"))
    p.setColor(group.Disabled, role.Button, QColor("#2d2f33"))
    return p


def _badge(c: Colors, kind: str) -> str:
    fg, bg = c.badges[kind]
    edge = QColor(fg)
    edge.setAlphaF(0.35)  # a pastel pill on a pale window needs an edge to be seen
    return (f"color: {fg}; background: {bg}; border: 1px solid {edge.name(QColor.NameFormat.HexArgb)}; "
            f"border-radius: 8px; padding: 0px 7px; font-weight: 600;")


def _card(c: Colors) -> str:
    return (f"QFrame#card {{ background: {c.card_background}; border: 1px solid {c.card_border}; "
            f"border-radius: 6px; }}"
            f"QFrame#card QLabel {{ background: transparent; }}")


def _notice(c: Colors) -> str:
    return (f"NoticeBar {{ background: {c.notice_background}; border: 1px solid {c.notice_border}; "
            f"border-radius: 4px; }}")


# Widgets styled from the colors, with what makes their style sheet: restyled when the appearance changes.
# Style sheets per widget, not one for the application: an application style sheet changes the metrics
# of every spin box and combo box (the toolbar no longer fit).
_styled: dict[int, tuple[QWidget, Callable[[Colors], str]]] = {}


def style(widget: QWidget, make: Callable[[Colors], str]) -> None:
    """Gives `widget` the style sheet `make(colors)`, now and whenever the appearance changes."""
    key = id(widget)
    if key not in _styled:
        widget.destroyed.connect(lambda _obj=None, k=key: _styled.pop(k, None))
    _styled[key] = (widget, make)
    widget.setStyleSheet(make(colors()))


def set_tone(widget: QWidget, tone: str, extra: str = "") -> None:
    """The text color of a label: "muted", "error", "warning", "ok", or "" for the palette's own; `extra`:
    more of its style sheet (a weight, a padding)."""
    if tone and tone not in TONES:
        raise ValueError(f"unknown tone {tone!r}")
    widget.setProperty("tone", tone)  # what a test (or a reader) asks: which tone, not which color
    style(widget, lambda c: (f"color: {getattr(c, tone)}; " if tone else "") + extra)


def set_badge(widget: QWidget, kind: str) -> None:
    widget.setProperty("badge", kind)
    style(widget, lambda c: _badge(c, kind))


def style_card(widget: QWidget) -> None:
    style(widget, _card)


def style_notice(widget: QWidget) -> None:
    style(widget, _notice)


_SP = QStyle.StandardPixmap
_DOCK_ICONS = {_SP.SP_DockWidgetCloseButton: "close", _SP.SP_TitleBarCloseButton: "close",
               _SP.SP_TitleBarNormalButton: "float"}


def dock_icon(kind: str, color: str) -> QIcon:
    """A dock title bar's "close" or "float" button in `color`, drawn at the sizes Qt asks for."""
    icon = QIcon()
    for size in (10, 12, 16, 20, 24, 32):  # Fusion asks for about 10 (a 14-pixel button less its margins)
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width = max(1, round(size / 10))
        painter.setPen(QPen(QColor(color), width))
        half = width / 2  # lines on pixel centers: crisp, not smeared over two pixels
        if kind == "close":
            painter.setPen(QPen(QColor(color), width * 1.4))  # a diagonal of width 1 reads as a faint gray
            lo, hi = round(size * 0.2) + half, round(size * 0.8) - half
            painter.drawLine(QPointF(lo, lo), QPointF(hi, hi))
            painter.drawLine(QPointF(hi, lo), QPointF(lo, hi))
        else:  # two overlapping windows: "take this out of the main window"
            side, shift, lo = round(size * 0.5), round(size * 0.2), round(size * 0.1)
            painter.drawRect(QRectF(lo + shift + half, lo + half, side, side))
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Clear)  # the front one hides
            painter.fillRect(QRectF(lo + half, lo + shift + half, side, side), Qt.GlobalColor.transparent)
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceOver)
            painter.drawRect(QRectF(lo + half, lo + shift + half, side, side))
        painter.end()
        icon.addPixmap(pixmap)
    return icon


class _DockButtons(QProxyStyle):
    """Fusion's dock float and close buttons are fixed grays, next to invisible on a dark window: these are
    drawn in the palette's text color. Set on the dock alone (its contents keep the application's style:
    the dock asks its own style for the buttons' icons)."""

    def __init__(self, base: str, color: str):
        super().__init__(base)
        self._icons = {kind: dock_icon(kind, color) for kind in set(_DOCK_ICONS.values())}

    def standardIcon(self, standard_icon, option=None, widget=None):
        kind = _DOCK_ICONS.get(standard_icon)
        if kind is None:
            return super().standardIcon(standard_icon, option, widget)
        return self._icons[kind]


_docks: dict[int, QDockWidget] = {}


def style_dock(dock: QDockWidget) -> None:
    """The dock's title bar buttons in the palette's text color, now and whenever the appearance changes
    (under Fusion; a platform style draws its own, for its own palette)."""
    key = id(dock)
    if key not in _docks:
        dock.destroyed.connect(lambda _obj=None, k=key: _docks.pop(k, None))
    _docks[key] = dock
    _style_dock(dock)


def _style_dock(dock: QDockWidget) -> None:
    app_style = QApplication.instance().style()
    old = dock.style() if isinstance(dock.style(), _DockButtons) else None
    if app_style.name().lower() == "fusion":
        new = _DockButtons("Fusion", QApplication.palette().color(QPalette.ColorRole.WindowText).name())
        new.setParent(dock)  # a widget does not own the style it is given; this way it goes with the dock
        dock.setStyle(new)
    elif old is not None:
        dock.setStyle(None)  # back to the application's (whichever it is later)
    if old is not None:
        old.deleteLater()


class _Notifier(QObject):
    changed = Signal(object)  # Colors: whatever drew with the old colors draws again


notifier = _Notifier()
_system_style: str | None = None  # Qt's own style, for going back to "system"
_applied: tuple[Colors, str] | None = None  # the colors and Qt style last applied


def apply(scheme: str) -> None:
    """Switches the whole application to `scheme` (one of SCHEMES) at once."""
    global _system_style
    if scheme not in SCHEMES:
        raise ValueError(f"appearance must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    app = QApplication.instance()
    if _system_style is None:
        _system_style = app.style().name()
    if scheme == "system":
        if app.style().name() != _system_style:
            app.setStyle(_system_style)
        # An empty palette unsets ours: Qt goes back to the platform's and follows its light/dark changes
        # again. A copy of the palette would pin it, and the app would stop following the system.
        app.setPalette(QPalette())
    else:
        app.setStyle("Fusion")
        app.setPalette(dark_palette() if scheme == "dark" else app.style().standardPalette())
    refresh()


def refresh() -> None:
    """Restyles the app for the palette in force; also called when the system's own theme changes."""
    global _applied
    now = colors()
    style_name = QApplication.instance().style().name()
    if (now, style_name) == _applied:
        return
    _applied = now, style_name
    for key, dock in list(_docks.items()):
        try:
            _style_dock(dock)
        except RuntimeError:  # its C++ side is gone
            _docks.pop(key, None)
    for key, (widget, make) in list(_styled.items()):
        try:
            widget.setStyleSheet(make(now))
        except RuntimeError:  # its C++ side is gone (destroyed() had no chance to say so)
            _styled.pop(key, None)
    notifier.changed.emit(now)
