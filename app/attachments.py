"""Text files attached to a message: each goes into the prompt box as a fenced block under its name, where
the user sees (and may edit) exactly what the model will be sent. Files come from Attach… or are dropped
on the box. The model reads text only: a binary file (a NUL byte in its first block, or not UTF-8) is
refused with the reason, and so is one too big to be worth a prompt; nothing typed is lost either way."""

from __future__ import annotations

from pathlib import Path

MAX_BYTES = 512 * 1024  # ~130k tokens of English: more than any local model's context
SNIFF_BYTES = 8192
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".json": "json", ".md": "markdown",
             ".c": "c", ".h": "c", ".cpp": "cpp", ".hpp": "cpp", ".rs": "rust", ".go": "go", ".java": "java",
             ".sh": "bash", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".html": "html", ".css": "css",
             ".sql": "sql", ".csv": "csv", ".xml": "xml", ".rb": "ruby", ".kt": "kotlin", ".swift": "swift"}


class AttachmentError(ValueError):
    """Why a file cannot be attached, in words for the user."""


def read_text_file(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise AttachmentError(f"{path.name} is not a file")
        if size > max_bytes:
            raise AttachmentError(f"{path.name} is {size / 1024:.0f} KB; attachments are text of at most "
                                  f"{max_bytes // 1024} KB (paste the part that matters)")
        data = path.read_bytes()
    except OSError as exc:
        raise AttachmentError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with its BOM (PowerShell 5's `>` writes it)
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise AttachmentError(f"{path.name} is not valid UTF-16 text") from None
    if b"\0" in data[:SNIFF_BYTES]:
        raise AttachmentError(f"{path.name} is not a text file (the models here read text only)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AttachmentError(f"{path.name} is not UTF-8 text (the models here read text only; save it as "
                              f"UTF-8)") from None


def fenced(name: str, text: str) -> str:
    """The file as a Markdown code block under its name, with a fence longer than any run of backticks in
    it (so a Markdown file with its own fences stays one block)."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    language = LANGUAGES.get(Path(name).suffix.lower(), "")
    return f"{name}:\n{fence}{language}\n{text.rstrip(chr(10))}\n{fence}\n"


def attach(existing: str, paths: list[str]) -> tuple[str, list[str]]:
    """(the prompt with every readable file appended, the reasons the others were refused)."""
    blocks, refused = [], []
    for p in paths:
        try:
            blocks.append(fenced(Path(p).name, read_text_file(p)))
        except AttachmentError as exc:
            refused.append(str(exc))
    if not blocks:
        return existing, refused
    head = existing.rstrip("\n")
    return (head + "\n\n" if head else "") + "\n".join(blocks), refused
