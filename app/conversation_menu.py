"""The Conversation menu: a new conversation, an imported or a branched one, and the settings new conversations
start with.

A user who always wants a system prompt, a sampling preset or a repetition penalty sets them once: "Use these
settings for new conversations" keeps the open conversation's system prompt and decoding settings (the
toolbar's and its More menu's) in QSettings, and every new conversation starts from them until they are reset.
Each conversation still keeps its own copy, so changing the defaults changes no saved conversation.
"""

from __future__ import annotations

import json

from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QMainWindow, QMenu

from .conversations import DECODING_DEFAULTS, decoding_settings

SETTING = "new_conversation_defaults"
FACTORY = {"system_prompt": "", **DECODING_DEFAULTS}


def new_conversation_defaults(settings) -> dict:
    """What a new conversation starts with: the saved defaults, each unreadable or missing one (a hand-edited
    settings file, a setting added since they were saved) as the app's own."""
    try:
        saved = json.loads(settings.value(SETTING) or "null")
    except (TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        return dict(FACTORY)
    prompt = saved.get("system_prompt")
    return {"system_prompt": prompt if isinstance(prompt, str) else "", **decoding_settings(saved)}


def has_saved_defaults(settings) -> bool:
    return new_conversation_defaults(settings) != FACTORY


def save_new_conversation_defaults(settings, values: dict) -> None:
    """`values`: a system prompt and DECODING's settings; saved as JSON (an INI file would hand numbers back as
    strings)."""
    settings.setValue(SETTING, json.dumps({name: values[name] for name in FACTORY}))


def reset_new_conversation_defaults(settings) -> None:
    settings.remove(SETTING)


def add_conversation_menu(window: QMainWindow) -> QMenu:
    """The window's `new_conversation`, `use_settings_for_new` and `reset_new_defaults` behind a menu; the
    reset is enabled while there are defaults of the user's to reset."""
    menu = window.menuBar().addMenu("&Conversation")
    menu.setObjectName("conversation_menu")
    new = menu.addAction("New conversation")
    new.setObjectName("new_conversation")
    new.setShortcut(QKeySequence.StandardKey.New)
    new.triggered.connect(window.new_conversation)
    imported = menu.addAction("Import…")
    imported.setObjectName("import_conversation")
    imported.setToolTip("Open a conversation saved as JSON: this app's export, or an OpenAI-style message list")
    imported.triggered.connect(window.import_conversation)
    branch = menu.addAction("Branch")
    branch.setObjectName("branch_conversation")
    branch.setToolTip("A copy of this conversation to go on another way (each answer's Branch link copies it "
                      "up to that answer); this one stays as it is")
    branch.triggered.connect(lambda: window.branch_conversation())
    menu.addSeparator()
    use = menu.addAction("Use these settings for new conversations")
    use.setObjectName("use_settings_for_new")
    use.setToolTip("New conversations start with this conversation's system prompt, sampling preset and "
                   "More settings (the conversations you have keep theirs)")
    use.triggered.connect(window.use_settings_for_new)
    reset = menu.addAction("Reset new conversations to the app's defaults")
    reset.setObjectName("reset_new_defaults")
    reset.setToolTip("New conversations start with no system prompt, greedy sampling and no penalty again")
    reset.triggered.connect(window.reset_new_defaults)
    menu.setToolTipsVisible(True)
    menu.aboutToShow.connect(lambda: reset.setEnabled(has_saved_defaults(window.settings)))
    menu.aboutToShow.connect(lambda: branch.setEnabled(window.conversation is not None and not window.busy))
    return menu
