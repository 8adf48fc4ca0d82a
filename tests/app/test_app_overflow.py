"""Narrow windows (app.overflow): the chat's actions and the conversation list's buttons that do not fit
wait in a "⋯" menu, labels whole, each still reachable, enabled as its button is."""

from app_fakes import PROMPT
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from app.actions import ChatActions
from app.overflow import OverflowRow


def _row(qtbot, width, **kw):
    buttons = [QPushButton(text) for text in ("First one", "Second", "Third button", "Fourth")]
    row = OverflowRow(buttons, **kw)
    qtbot.addWidget(row)
    row.resize(width, 40)
    row.show()
    qtbot.waitExposed(row)
    return row, buttons


def _whole(button) -> bool:
    return button.width() >= button.sizeHint().width()


def test_all_fit_no_menu(qtbot):
    row, buttons = _row(qtbot, 800)
    assert row.overflowed() == [] and row.more.isHidden()
    assert all(b.isVisible() and _whole(b) for b in buttons)


def test_what_does_not_fit_goes_to_the_menu_from_the_right(qtbot):
    row, buttons = _row(qtbot, 800)
    for width in (330, 230, 120, 30):
        row.resize(width, 40)
        qtbot.wait(10)
        hidden = row.overflowed()
        assert hidden and hidden == buttons[len(buttons) - len(hidden):]  # the rightmost ones
        assert row.more.isVisible()
        if width >= row.minimumSizeHint().width():  # (a layout gives the row at least that)
            assert all(_whole(b) for b in buttons if b.isVisible())  # nothing clipped
        assert buttons[0].isVisible()  # the first always shows (it and "⋯" are the row's least)
        row.menu.aboutToShow.emit()
        assert [a.text() for a in row.menu.actions()] == [b.text() for b in hidden]
    row.resize(800, 40)
    qtbot.wait(10)
    assert row.overflowed() == [] and row.more.isHidden()


def test_a_menu_item_clicks_its_button_and_is_enabled_as_it_is(qtbot):
    row, buttons = _row(qtbot, 60)  # the first button alone, the rest in the menu
    clicked = []
    for b in buttons:
        b.clicked.connect(lambda _=False, b=b: clicked.append(b.text()))
    buttons[-1].setEnabled(False)
    row.menu.aboutToShow.emit()
    actions = {a.text(): a for a in row.menu.actions()}
    assert not actions["Fourth"].isEnabled() and actions["Second"].isEnabled()
    actions["Second"].trigger()
    assert clicked == ["Second"]


def test_a_trailing_label_shown_takes_its_room(qtbot):
    actions = ChatActions()
    qtbot.addWidget(actions)
    wide_enough = sum(b.sizeHint().width() + 6 for b in actions.buttons()) + 10
    actions.resize(wide_enough, 40)
    actions.show()
    qtbot.waitExposed(actions)
    assert actions.overflowed() == []
    actions.edit_label.show()
    qtbot.wait(10)
    assert actions.overflowed() and all(_whole(b) for b in actions.buttons() if b.isVisible())
    assert actions.edit_label.width() >= actions.edit_label.sizeHint().width()
    actions.edit_label.hide()
    qtbot.wait(10)
    assert actions.overflowed() == []


def test_a_narrow_window_keeps_every_action_whole_and_reachable(qtbot, make_window):
    window = make_window()
    window.resize(*window.DEFAULT_SIZE)
    qtbot.wait(50)
    actions, sidebar_row = window.chat_actions, window.sidebar.new_button.parentWidget()
    assert actions.overflowed() == [] and sidebar_row.overflowed() == []  # at the default size, all shown
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    window.resize(900, 700)
    qtbot.wait(50)
    # The list gave up its width before the chat got cramped: "New" and "⋯" are left of its buttons.
    list_width, chat_width = window.splitter.sizes()
    assert list_width == window.sidebar.minimumSizeHint().width() < chat_width
    assert sidebar_row.overflowed() == sidebar_row.row_buttons[1:]
    assert actions.overflowed()
    for row in (actions, sidebar_row):
        assert all(_whole(b) for b in row.row_buttons if b.isVisible())
    # Regenerate through the menu when it is there, else its button: the answer is written again.
    actions.menu.aboutToShow.emit()
    item = {a.text(): a for a in actions.menu.actions()}.get(actions.regenerate.text())
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        item.trigger() if item else actions.regenerate.click()
    assert len(window.backend.calls) == 2
    window.resize(*window.DEFAULT_SIZE)
    qtbot.wait(50)
    assert actions.overflowed() == [] and sidebar_row.overflowed() == []  # the list's width is back
    # A width the user gives the list is the one it comes back to.
    window.splitter.moveSplitter(300, 1)
    window.resize(900, 700)
    qtbot.wait(50)
    assert window.splitter.sizes()[0] < 300
    window.resize(*window.DEFAULT_SIZE)
    qtbot.wait(50)
    assert window.splitter.sizes()[0] == 300
