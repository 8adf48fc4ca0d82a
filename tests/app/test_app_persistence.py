"""The window saves every turn: round trips through a fresh window, stopped and interrupted answers,
failed turns, and the conversation's settings."""

import threading

from app_fakes import PROMPT, FakeBackend, endless_events, recorded_answer
from PySide6.QtCore import Qt

from app.conversations import ConversationStore
from app.main_window import MainWindow
from engine.errors import SubspecError
from engine.store import DEFAULT_MODEL


def send(qtbot, window, text=PROMPT):
    qtbot.keyClicks(window.prompt, text)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def answer(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        send(qtbot, window, text)
    return blocker.args[0]


def saved(window):
    return [(m.role, m.content, m.complete) for m in window.store.messages(window.conversation.id)]


def test_a_turn_is_saved_and_reopens_in_a_new_window(qtbot, make_window):
    window = make_window()
    assert window.conversation is None  # a new chat is saved on its first message
    answer(qtbot, window)
    answer(qtbot, window, "And of Italy?")
    cid = window.conversation.id
    assert window.store.get(cid).title == PROMPT
    assert saved(window) == [("user", PROMPT, True), ("assistant", recorded_answer(), True),
                             ("user", "And of Italy?", True), ("assistant", recorded_answer(), True)]
    stats = window.store.messages(cid)[1].stats
    assert stats["new_tokens"] == 7 and stats["method"] == "vanilla" and stats["model"] == "FakeLM-1M"
    assert "text" not in stats
    window.close()

    again = make_window()
    assert again.conversation.id == cid  # the last conversation reopens
    assert again.history == [{"role": "user", "content": PROMPT},
                             {"role": "assistant", "content": recorded_answer()},
                             {"role": "user", "content": "And of Italy?"},
                             {"role": "assistant", "content": recorded_answer()}]
    text = again.transcript.toPlainText()
    assert text.count("FakeLM-1M\nThe capital of France is Paris.\n7 tokens") == 2
    assert again.sidebar.current_id() == cid
    answer(qtbot, again, "And of Spain?")
    messages, _params = again.backend.calls[0]
    assert len(messages) == 5  # the reopened history goes to the model


def test_stop_keeps_the_partial_answer(qtbot, make_window):
    gate = threading.Event()
    window = make_window(FakeBackend(events=endless_events, gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.stop()
        gate.set()
    partial = window.history[-1]["content"]
    assert partial.startswith(" w0")
    [_user, (role, content, complete)] = saved(window)
    assert (role, content, complete) == ("assistant", partial, True)
    assert window.store.messages(window.conversation.id)[1].stats["finish_reason"] == "stopped"


def test_a_streaming_answer_is_on_disk_before_it_ends(qtbot, make_window, monkeypatch):
    monkeypatch.setattr(MainWindow, "ANSWER_SAVE_INTERVAL_S", 0.0)
    gate = threading.Event()
    window = make_window(FakeBackend(events=endless_events, gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    # Another connection sees it, as a crashed process's successor would.
    other = ConversationStore()
    [_user, partial] = other.messages(window.conversation.id)
    assert (partial.role, partial.content, partial.complete) == ("assistant", " w0", False)
    other.close()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.stop()
        gate.set()


def test_closing_mid_answer_keeps_it_as_interrupted(qtbot, make_window):
    gate = threading.Event()
    window = make_window(FakeBackend(events=endless_events, gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    cid = window.conversation.id
    gate.set()
    window.close()
    again = make_window()
    assert again.conversation.id == cid
    [_user, partial] = again.store.messages(cid)
    assert partial.content.startswith(" w0") and not partial.complete
    assert again.history[-1]["content"] == partial.content
    assert again.transcript.toPlainText().endswith(partial.content.strip() + " [interrupted]\nCopy · Branch")  # Markdown trims


def test_a_failed_first_turn_leaves_nothing_behind(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(fail_on_call={0}, fail_after=2))
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        send(qtbot, window)
    assert window.conversation is None and window.store.conversations() == []
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)  # the text went back into the box
    # The retry creates the conversation afresh.
    assert saved(window) == [("user", PROMPT, True), ("assistant", recorded_answer(), True)]


def test_a_failed_later_turn_removes_only_that_turn(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(fail_on_call={1}, fail_after=2))
    answer(qtbot, window)
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        send(qtbot, window, "And of Italy?")
    assert saved(window) == [("user", PROMPT, True), ("assistant", recorded_answer(), True)]


def test_system_prompt_and_sampling_are_saved_and_sent(qtbot, make_window):
    window = make_window()
    window.system_prompt.setText("Answer in one word.")
    window.sampling.preset.setCurrentText("balanced")
    answer(qtbot, window)
    messages, params = window.backend.calls[0]
    assert messages[0] == {"role": "system", "content": "Answer in one word."}
    assert (params["temperature"], params["top_p"]) == (0.7, 0.9)
    conv = window.store.get(window.conversation.id)
    assert (conv.system_prompt, conv.preset, conv.temperature, conv.top_p) == ("Answer in one word.", "balanced",
                                                                               0.7, 0.9)
    assert [m.role for m in window.store.messages(conv.id)] == ["user", "assistant"]  # not the system prompt

    window.sampling.temperature.setValue(0.3)  # an edit makes the preset custom and is saved at once
    window.system_prompt.setText("Be verbose.")
    window.system_prompt.editingFinished.emit()
    conv = window.store.get(conv.id)
    assert (conv.system_prompt, conv.preset, conv.temperature, conv.top_p) == ("Be verbose.", "custom", 0.3, 0.9)
    window.close()

    again = make_window()
    assert again.system_prompt.text() == "Be verbose."
    assert again.sampling.values() == {"preset": "custom", "temperature": 0.3, "top_p": 0.9, "top_k": 0, "min_p": 0.0,
                                       "repetition_penalty": 1.0, "penalty_last_n": 64, "max_new_tokens": 512,
                                       "seed": -1, "stop": "", "answer_format": "text", "answer_schema": ""}


def test_top_k_min_p_the_repetition_penalty_and_the_answer_length_are_the_conversations(qtbot, make_window):
    window = make_window()
    s = window.sampling
    off = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "penalty_last_n": 64, "max_new_tokens": 512,
           "seed": -1, "stop": "", "answer_format": "text", "answer_schema": ""}
    assert s.more_values() == off and s.more.text() == "More"
    panel = s.more.menu().actions()[0].defaultWidget()  # the boxes live in the button's menu
    assert {s.top_k, s.min_p, s.repetition_penalty, s.penalty_last_n, s.max_new_tokens} <= set(
        panel.findChildren(type(s.top_k)) + panel.findChildren(type(s.min_p)))
    assert not s.penalty_last_n.isEnabled()  # a window without a penalty does nothing
    s.penalty_last_n.setValue(256)
    assert s.more.text() == "More"  # ... and is not counted as a change
    s.repetition_penalty.setValue(1.15)
    assert s.penalty_last_n.isEnabled()
    s.top_k.setValue(40)
    s.max_new_tokens.setValue(2048)
    assert s.more.text() == "More (4)"  # changed, and said so on the closed menu's button
    assert s.more.accessibleName() == "More sampling settings (4 changed)"  # and to a screen reader
    answer(qtbot, window)
    _messages, params = window.backend.calls[0]
    assert (params["top_k"], params["min_p"], params["repetition_penalty"], params["penalty_last_n"],
            params["max_new_tokens"]) == (40, 0.0, 1.15, 256, 2048)
    first = window.store.get(window.conversation.id)
    assert (first.top_k, first.min_p, first.repetition_penalty, first.penalty_last_n, first.max_new_tokens) == \
        (40, 0.0, 1.15, 256, 2048)
    s.preset.setCurrentText("creative")  # a preset sets temperature and top-p only
    mine = {**off, "top_k": 40, "repetition_penalty": 1.15, "penalty_last_n": 256, "max_new_tokens": 2048}
    assert s.more_values() == mine

    window.new_conversation()  # a new conversation starts from the defaults
    assert s.more_values() == off and s.more.text() == "More"
    s.min_p.setValue(0.05)
    answer(qtbot, window, "another question")
    second = window.conversation.id
    window.open_conversation(first.id)
    assert s.more_values() == mine
    window.open_conversation(second)
    assert s.more_values() == {**off, "min_p": 0.05} and s.more.text() == "More (1)"
    window.close()
    assert make_window().sampling.more_values() == {**off, "min_p": 0.05}  # the last conversation, reopened


def test_the_seed_and_stop_strings_are_the_conversations_and_each_sampled_answer_says_its_seed(qtbot, make_window):
    window = make_window()
    s = window.sampling
    panel = s.more.menu().actions()[0].defaultWidget()
    assert s.seed in panel.findChildren(type(s.seed)) and s.stop in panel.findChildren(type(s.stop))
    assert s.seed.text() == "new for each answer" and s.stop.placeholderText() == "none"
    answer(qtbot, window)  # greedy: no seed to speak of
    params = window.backend.calls[0][1]
    assert params["seed"] is None and params["stop"] == ()
    assert "seed" not in window.store.messages(window.conversation.id)[1].stats

    s.preset.setCurrentText("balanced")
    qtbot.keyClicks(s.stop, "\\n\\n, User: ,###")
    assert s.more.text() == "More (1)"
    for button in (window.chat_actions.regenerate, window.chat_actions.regenerate):
        with qtbot.waitSignal(window.host.finished, timeout=5000):
            button.click()
    first, second = (window.backend.calls[i][1] for i in (1, 2))
    assert first["stop"] == second["stop"] == ("\n\n", "User:", "###")
    assert 0 <= first["seed"] <= 2**31 - 1 and first["seed"] != second["seed"]  # a new one each answer
    answer_stats = window.store.messages(window.conversation.id)[1].stats
    assert answer_stats["seed"] == second["seed"]  # kept with the answer, and shown under it
    assert f"seed {second['seed']}" in window.transcript.toPlainText()

    s.seed.setValue(second["seed"])  # that answer's seed, set: regenerating gives it again
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.regenerate.click()
    assert window.backend.calls[3][1]["seed"] == second["seed"] and s.more.text() == "More (2)"
    conv = window.store.get(window.conversation.id)
    assert (conv.seed, conv.stop) == (second["seed"], "\\n\\n, User: ,###")
    window.close()
    again = make_window()
    assert (again.sampling.seed.value(), again.sampling.stop.text()) == (second["seed"], "\\n\\n, User: ,###")


def test_window_geometry_and_the_sidebars_width_are_restored(qtbot, make_window):
    window = make_window()
    window.resize(760, 500)
    window.stats_dock.hide()  # (room for the splitter: the offscreen screen is 800 pixels wide)
    qtbot.waitUntil(lambda: window.splitter.width() > 700, timeout=2000)
    window.splitter.setSizes([450, 300])
    sidebar = window.splitter.sizes()[0]
    assert sidebar == 450
    window.close()
    again = make_window()
    assert (again.width(), again.height()) == (760, 500)
    assert again.splitter.sizes()[0] == sidebar


def test_new_conversations_start_with_the_settings_the_user_made_their_default(qtbot, make_window):
    from PySide6.QtGui import QAction

    window = make_window()
    s = window.sampling
    factory = s.values()
    answer(qtbot, window)
    before = window.conversation.id  # made with the app's defaults
    window.new_conversation()
    window.system_prompt.setText("Be brief.")
    s.preset.setCurrentText("balanced")
    s.repetition_penalty.setValue(1.1)
    s.penalty_last_n.setValue(0)
    s.max_new_tokens.setValue(1024)
    mine = s.values()
    menu = window.conversation_menu
    reset = window.findChild(QAction, "reset_new_defaults")
    menu.aboutToShow.emit()
    assert not reset.isEnabled()  # nothing of the user's to reset yet
    window.findChild(QAction, "use_settings_for_new").trigger()
    assert "New conversations will start with these settings" in window.statusBar().currentMessage()
    menu.aboutToShow.emit()
    assert reset.isEnabled()

    window.new_conversation()
    assert s.values() == mine and window.system_prompt.text() == "Be brief."
    assert s.more.text() == "More (3)"
    answer(qtbot, window)
    messages, params = window.backend.calls[-1]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert (params["temperature"], params["top_p"], params["repetition_penalty"], params["penalty_last_n"],
            params["max_new_tokens"]) == (0.7, 0.9, 1.1, 0, 1024)
    made = window.store.get(window.conversation.id)
    assert (made.system_prompt, made.preset, made.penalty_last_n) == ("Be brief.", "balanced", 0)
    s.temperature.setValue(0.2)  # a conversation's own edit is not a new default
    window.open_conversation(before)  # and the defaults change no conversation made before them
    assert s.values() == factory and window.system_prompt.text() == ""
    window.close()

    again = make_window()  # kept across starts
    again.new_conversation()
    assert again.sampling.values() == mine and again.system_prompt.text() == "Be brief."
    again.findChild(QAction, "reset_new_defaults").trigger()
    again.new_conversation()
    assert again.sampling.values() == factory and again.system_prompt.text() == ""
    again.conversation_menu.aboutToShow.emit()
    assert not again.findChild(QAction, "reset_new_defaults").isEnabled()


def test_unreadable_new_conversation_defaults_read_as_the_apps_own(qtbot, make_window):
    from app.conversation_menu import FACTORY, SETTING, new_conversation_defaults

    window = make_window()
    settings = window.settings
    for garbage in ("not json", "[1, 2]", "null", "3"):
        settings.setValue(SETTING, garbage)
        assert new_conversation_defaults(settings) == FACTORY
    # One by one: a hand-edited file's bad values (and settings added since the defaults were saved) read as
    # the app's own; the good ones stay.
    settings.setValue(SETTING, '{"system_prompt": 5, "temperature": "hot", "top_k": 1e999, "min_p": true,'
                               ' "penalty_last_n": 100, "preset": "creative", "top_p": 0.95}')
    assert new_conversation_defaults(settings) == {**FACTORY, "penalty_last_n": 100, "preset": "creative",
                                                   "top_p": 0.95}
    settings.setValue(SETTING, '{"top_k": -5, "max_new_tokens": 99999999999, "repetition_penalty": 7}')
    window.new_conversation()  # out of range: the boxes clamp it, the window still opens
    more = window.sampling.more_values()
    assert (more["top_k"], more["max_new_tokens"], more["repetition_penalty"]) == (0, 1 << 17, 2.0)


def test_the_next_start_loads_the_model_loaded_last(qtbot, make_window, monkeypatch):
    import app.main_window

    window = make_window()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")
    window.close()
    installed = {"FakeLM-2M"}
    monkeypatch.setattr(app.main_window, "model_available", lambda name: name in installed)
    again = make_window()
    assert again.settings.value("last_model") == "fake-model"  # (make_window loads "fake-model")
    with qtbot.waitSignal(again.host.loaded, timeout=5000):
        again.switch_model("FakeLM-2M")
    assert again.startup_model() == "FakeLM-2M"
    installed.clear()  # deleted since: the default model, and the user is told why
    assert again.startup_model() == DEFAULT_MODEL
    assert "FakeLM-2M, the model loaded last time, is no longer installed" in again.statusBar().currentMessage()
    assert again.settings.value("last_model") is None


def test_a_model_named_for_one_run_is_not_remembered_and_a_folder_is_kept_absolute(qtbot, make_window, tmp_path,
                                                                                   monkeypatch):
    window = make_window()
    window.remember_model = False  # main's --model load
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("FakeLM-2M")
    assert window.settings.value("last_model") == "fake-model"  # (the earlier load's) not the --model one
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("my-model/")  # a folder picked later: remembered, wherever the next start runs
    assert window.settings.value("last_model") == str(tmp_path / "my-model")


def test_a_failed_load_is_not_remembered(qtbot, make_window, dialogs):
    window = make_window(load_error=SubspecError("out of memory"), wait_loaded=False)
    qtbot.waitUntil(lambda: not window.loading, timeout=5000)
    assert window.settings.value("last_model") is None


def test_settings_a_model_no_longer_loads_with_are_forgotten(qtbot, make_window, dialogs):
    """Saved with 32k of context; today the free VRAM does not allow it: the load fails once, says so, and
    the next load of the model takes the Hardware panel's settings instead of failing the same way."""
    from app.hardware_panel import load_options_for, save_load_options
    from app.main_window import default_settings

    settings = default_settings()
    save_load_options(settings, "fake-model", {"context": 32768})
    settings.sync()
    backend, loads = FakeBackend(), []

    def factory(model, progress, **options):
        loads.append((model, options))
        if options.get("context") == 32768 or model == "typo":
            raise SubspecError("the plan needs 3.1 GB more VRAM than is free")
        return backend

    window = make_window(backend, factory=factory, wait_loaded=False)
    qtbot.waitUntil(lambda: not window.loading, timeout=5000)
    assert loads == [("fake-model", {"context": 32768})] and window.model_name is None
    assert "did not load with the settings it was last loaded with" in window.statusBar().currentMessage()
    assert load_options_for(window.settings, "fake-model") is None
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("fake-model")
    assert loads[-1] == ("fake-model", {})

    window.remember_model = False  # main's --model load, which fails ...
    window.load_model("typo")
    qtbot.waitUntil(lambda: not window.loading, timeout=5000)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("FakeLM-2M")  # ... then a model picked in the app: remembered
    assert window.settings.value("last_model") == "FakeLM-2M"
