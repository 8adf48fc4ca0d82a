"""Attaching text files to a message: Attach… or a drop on the message box puts each file in the box as a
fenced block under its name; files the models cannot read are refused with the reason, nothing typed lost."""

from app_fakes import FakeBackend
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app import dialogs as app_dialogs
from app.attachments import AttachmentError, attach, fenced, read_text_file


def test_a_file_becomes_a_fenced_block_under_its_name(tmp_path):
    (tmp_path / "a.py").write_text("print('hi')\n")
    text, refused = attach("What does this do?", [str(tmp_path / "a.py")])
    assert text == "What does this do?\n\na.py:\n```python\nprint('hi')\n```\n" and refused == []
    # A Markdown file with its own fences stays one block: the fence is longer than any inside.
    assert fenced("notes.md", "x\n```\ncode\n```\n").startswith("notes.md:\n````markdown\n")


def test_what_the_models_cannot_read_is_refused_with_the_reason(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "big.log").write_bytes(b"x" * 2048)
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode())
    for name, reason in (("img.png", "not a text file"), ("latin1.txt", "not UTF-8 text"),
                         ("big.log", "attachments are text of at most 1 KB"), ("missing.txt", "cannot read")):
        try:
            read_text_file(tmp_path / name, max_bytes=1024)
        except AttachmentError as exc:
            assert reason in str(exc), (name, exc)
        else:
            raise AssertionError(f"{name} was attached")
    assert read_text_file(tmp_path / "bom.txt") == "hello"  # Notepad's BOM is not part of the text
    (tmp_path / "ps.txt").write_bytes("héllo\r\n".encode("utf-16"))  # PowerShell 5's `>`: UTF-16, a BOM
    assert read_text_file(tmp_path / "ps.txt") == "héllo\r\n"
    text, refused = attach("keep me", [str(tmp_path / "img.png"), str(tmp_path / "bom.txt")])
    assert text == "keep me\n\nbom.txt:\n```\nhello\n```\n" and len(refused) == 1


def test_attach_puts_the_files_in_the_box_and_they_are_sent(qtbot, make_window, dialogs, monkeypatch, tmp_path):
    (tmp_path / "main.rs").write_text("fn main() {}\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    window = make_window(FakeBackend())
    qtbot.keyClicks(window.prompt, "Review this:")
    monkeypatch.setattr(app_dialogs, "choose_files", lambda parent, title: [str(tmp_path / "main.rs"),
                                                                               str(tmp_path / "blob.bin")])
    window.attach_button.click()
    assert window.prompt.toPlainText() == "Review this:\n\nmain.rs:\n```rust\nfn main() {}\n```\n"
    assert "blob.bin is not a text file" in dialogs.shown[-1]["text"]  # the other one, said
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.backend.calls[0][0][-1]["content"].endswith("```rust\nfn main() {}\n```")


def test_a_refused_file_is_said_and_what_was_typed_stays(qtbot, make_window, dialogs, tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    window = make_window(FakeBackend())
    qtbot.keyClicks(window.prompt, "half a thought")
    window.attach_files([str(tmp_path / "blob.bin")])
    assert window.prompt.toPlainText() == "half a thought"
    assert dialogs.shown[-1]["title"] == "Attach" and "blob.bin is not a text file" in dialogs.shown[-1]["text"]


def test_files_dropped_on_the_message_box_are_attached(qtbot, make_window, tmp_path):
    (tmp_path / "todo.txt").write_text("buy milk")
    window = make_window(FakeBackend())
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "todo.txt"))])
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    window.prompt.dropEvent(drop)
    assert window.prompt.toPlainText() == "todo.txt:\n```\nbuy milk\n```\n" and drop.isAccepted()
