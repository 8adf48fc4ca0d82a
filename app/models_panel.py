"""The Models dock: recommended models with a fits / does-not-fit badge for this machine, a hub search,
downloads with progress, speed, time left, pause, resume and cancel, partial downloads from earlier runs,
and the installed models with their disk use, import, substitute conversion and delete.

Everything slow happens in app.model_manager.ModelManager, which belongs to the window: this dock only shows
its snapshots and asks it. The fit badges are engine.catalogue.estimate over the hardware panel's profile
(pure arithmetic, as the hardware panel's plan, so on the GUI thread); the probe itself is the hardware
panel's, on its thread.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QFrame, QHBoxLayout, QLabel, QLineEdit, QMainWindow,
                               QProgressBar, QPushButton, QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout,
                               QWidget)

from . import dialogs, theme
from . import models_text as text
from .model_manager import ModelManager

WIDTH = 560  # wide enough for a repo id, its badge and two buttons on one line
# Label tones (app.theme colors them, light or dark)
MUTED = "muted"
ERROR = "error"


def choose_folder(parent: QWidget | None) -> str | None:
    """A Hugging Face model folder from the user, or None (tests replace this, as app.dialogs' questions)."""
    path = QFileDialog.getExistingDirectory(parent, "Import a model folder (with config.json and safetensors)")
    return path or None


def choose_gguf(parent: QWidget | None) -> str | None:
    path, _ = QFileDialog.getOpenFileName(parent, "Import a GGUF file", "", "GGUF models (*.gguf)")
    return path or None


def _label(text_: str = "", tone: str = "", wrap: bool = True, rich: bool = False) -> QLabel:
    label = QLabel(text_)
    label.setWordWrap(wrap)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    if tone:
        theme.set_tone(label, tone)
    return label


def _title(text_: str) -> QLabel:
    label = _label(text_, wrap=False)
    font = label.font()
    font.setBold(True)
    font.setPointSizeF(font.pointSizeF() * 1.08)
    label.setFont(font)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class Badge(QLabel):
    def __init__(self, text_: str = "", kind: str = "neutral"):
        super().__init__()
        self.kind = ""
        self.set(text_, kind)

    def set(self, text_: str, kind: str) -> None:
        self.kind = kind
        self.setText(text_)
        theme.set_badge(self, kind)
        self.setVisible(bool(text_))


class Card(QFrame):
    """A rounded box: a title line with buttons on the right, a row of badges, then lines of text. Badges
    sit under the title, not beside it: a long repo id, two badges and two buttons do not fit one line of
    a dock."""

    def __init__(self, title: str):
        super().__init__()
        self.setObjectName("card")
        theme.style_card(self)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(12, 9, 12, 10)
        self.body.setSpacing(3)
        self.head = QHBoxLayout()
        self.head.setSpacing(6)
        self.title = _title(title)
        self.title.setToolTip(title)
        # Clipped rather than widening the dock when a repo id is very long (the tooltip has all of it).
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.title.setMinimumWidth(120)
        self.head.addWidget(self.title, 1)
        self.buttons = QHBoxLayout()
        self.buttons.setSpacing(4)
        self.head.addLayout(self.buttons)
        self.body.addLayout(self.head)
        self.badges = QHBoxLayout()
        self.badges.setSpacing(4)
        self.badges.addStretch(1)
        self.body.addLayout(self.badges)

    def button(self, label: str, slot, tip: str = "") -> QPushButton:
        b = QPushButton(label)
        b.setToolTip(tip)
        b.clicked.connect(slot)
        self.buttons.addWidget(b)
        return b

    def badge(self, text_: str = "", kind: str = "neutral") -> Badge:
        b = Badge(text_, kind)
        self.badges.insertWidget(self.badges.count() - 1, b)
        return b

    def progress_bar(self) -> QProgressBar:
        """A thin bar without text (the line below it says the numbers)."""
        bar = QProgressBar()
        bar.setTextVisible(False)
        bar.setFixedHeight(8)
        self.body.addWidget(bar)
        return bar

    def line(self, text_: str = "", tone: str = MUTED, rich: bool = False) -> QLabel:
        label = _label(text_, tone, rich=rich)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.addWidget(label)
        return label


class CardList(QScrollArea):
    """Cards stacked in a scroll area, with a placeholder when there are none."""

    def __init__(self, placeholder: str):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        inner = QWidget()
        self.layout_ = QVBoxLayout(inner)
        self.layout_.setContentsMargins(2, 6, 8, 6)
        self.layout_.setSpacing(8)
        self.placeholder = _label(placeholder, MUTED)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.layout_.addWidget(self.placeholder)
        self.layout_.addStretch(1)
        self.setWidget(inner)
        self.items: list[QWidget] = []

    def set_items(self, widgets: list[QWidget]) -> None:
        for w in self.items:
            self.layout_.removeWidget(w)
            w.deleteLater()
        self.items = list(widgets)
        for i, w in enumerate(self.items):
            self.layout_.insertWidget(1 + i, w)
        self.placeholder.setVisible(not self.items)

    def add(self, widget: QWidget) -> None:
        self.layout_.insertWidget(1 + len(self.items), widget)
        self.items.append(widget)
        self.placeholder.hide()

    def remove(self, widget: QWidget) -> None:
        if widget in self.items:
            self.items.remove(widget)
            self.layout_.removeWidget(widget)
            widget.deleteLater()
        self.placeholder.setVisible(not self.items)


def _section(text_: str) -> QLabel:
    label = _label(text_.upper(), wrap=False)
    theme.set_tone(label, MUTED, "font-weight: 600; letter-spacing: 1px; padding-top: 6px;")
    return label


class CatalogueCard(Card):
    def __init__(self, entry, panel: ModelsDock):
        super().__init__(entry.title)
        self.entry = entry
        self.fit = self.badge("Checking …", "neutral")
        if entry.gated:
            self.badge("Gated", "info").setToolTip("Accept the licence on the hub and log in (`hf auth login`) "
                                                   "or set HF_TOKEN before downloading")
        self.action = self.button("Download", lambda: panel.download(entry.repo_id),
                                  f"Download {entry.repo_id} ({text.human_bytes(entry.size_bytes)})")
        self.line(f"{entry.repo_id} · {entry.parameters / 1e9:.1f}B parameters · "
                  f"{text.human_bytes(entry.size_bytes)} download")
        self.line(entry.note, "")
        self.summary = self.line("")
        self.summary.hide()
        self.estimate = None

    def set_estimate(self, estimate) -> None:
        self.estimate = estimate
        kind = _show_fit(self.fit, estimate)
        self.summary.setText(estimate.summary[0].upper() + estimate.summary[1:])
        self.summary.setVisible(kind != "cpu")  # "CPU only: about N tok/s" says what the badge says


def _show_fit(badge: Badge, estimate) -> str:
    words, kind = text.fit_badge(estimate)
    if estimate.predicted_tokens_per_s and estimate.fits:
        words += f" · ≈{estimate.predicted_tokens_per_s:.0f} tok/s" if estimate.predicted_tokens_per_s >= 10 \
            else f" · ≈{estimate.predicted_tokens_per_s:.1f} tok/s"
    badge.set(words, kind)
    badge.setToolTip(estimate.summary)
    return kind


class HitCard(Card):
    def __init__(self, hit: dict, panel: ModelsDock):
        super().__init__(hit["repo_id"])
        self.repo_id = hit["repo_id"]
        # From the repo's config.json, fetched after the search (ModelManager.config_found).
        self.fit = self.badge("Checking fit …", "neutral")
        self.config: dict | None = None
        self.action = self.button("Download", lambda: panel.download(hit["repo_id"]),
                                  f"Download {hit['repo_id']}: safetensors weights and tokenizer, checked "
                                  f"against the hub's checksums")
        facts = [text.count_text(hit.get("downloads", 0), "download"), text.count_text(hit.get("likes", 0), "like")]
        if hit.get("updated"):
            facts.append(f"updated {hit['updated'][:10]}")
        self.facts = self.line(" · ".join(facts))


def _set_action(button: QPushButton, repo_id: str, panel: ModelsDock) -> None:
    """A Download button reads Installed or Downloading while that is so."""
    if panel.installed_repo(repo_id):
        button.setText("Installed")
        button.setEnabled(False)
    elif panel.manager.downloading(repo_id):
        button.setText("Downloading …")
        button.setEnabled(False)
    else:
        button.setText("Download")
        button.setEnabled(True)


class JobCard(Card):
    """A download or an import: progress bar, bytes, speed, time left; pause, resume, cancel, dismiss."""

    def __init__(self, job: dict, panel: ModelsDock):
        super().__init__(job["title"])
        self.jid = job["id"]
        self.kind = job["kind"]
        self.state_badge = self.badge("", "neutral")
        self.pause_button = self.button("Pause", lambda: panel.manager.pause(self.jid),
                                        "Stop for now; the bytes already here stay, and Resume continues")
        self.resume_button = self.button("Resume", lambda: panel.manager.resume(self.jid),
                                         "Continue from where it stopped")
        self.cancel_button = self.button("Cancel", lambda: panel.manager.cancel(self.jid),
                                         "Stop and delete the partial files")
        self.dismiss_button = self.button("Dismiss", lambda: panel.manager.dismiss(self.jid),
                                          "Remove from this list")
        self.bar = self.progress_bar()
        self.detail = self.line("")
        self.error = self.line("", ERROR)
        self.update_job(job)

    def update_job(self, job: dict) -> None:
        state, active = job["state"], job["active"]
        kind = {"done": "good", "failed": "bad", "paused": "cpu", "cancelled": "neutral"}.get(state, "info")
        self.state_badge.set(text.job_status(job), kind)
        if job["fraction"] is None:
            self.bar.setRange(0, 0 if active else 1)  # busy while there is no fraction to show
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(round(1000 * job["fraction"]))
        self.bar.setVisible(state not in ("done", "cancelled", "failed") or (state == "failed" and job["resumable"]))
        download = self.kind == "download"
        self.pause_button.setVisible(download and active and state not in ("pausing", "cancelling"))
        self.resume_button.setVisible(download and not active and job["resumable"])
        stoppable = download or (self.kind == "import" and active)
        self.cancel_button.setVisible(stoppable and (active or job["resumable"]) and state != "cancelling")
        self.cancel_button.setToolTip("Stop and delete the partial files" if download else
                                      "Stop the import; nothing is installed")
        self.dismiss_button.setVisible(not active and state != "paused")
        self.detail.setText(text.job_detail(job))
        self.detail.setVisible(bool(self.detail.text()))
        self.error.setText(job["error"])
        self.error.setVisible(bool(job["error"]))


class PartialCard(Card):
    def __init__(self, partial: dict, panel: ModelsDock):
        super().__init__(partial["repo_id"] + (f" · {partial['gguf']}" if partial.get("gguf") else ""))
        self.repo_id = partial["repo_id"]
        self.gguf = partial.get("gguf")
        self.badge("Paused", "cpu")
        self.resume_button = self.button("Resume", lambda: panel.resume_partial(partial),
                                         "Continue this download where it stopped")
        self.discard_button = self.button("Discard", lambda: panel.discard_partial(partial),
                                          "Delete the partial files")
        frac = partial["have_bytes"] / partial["total_bytes"] if partial["total_bytes"] else 0.0
        bar = self.progress_bar()
        bar.setRange(0, 1000)
        bar.setValue(round(1000 * frac))
        self.line(f"{text.human_bytes(partial['have_bytes'])} of {text.human_bytes(partial['total_bytes'])} "
                  f"kept · commit {partial['commit'][:7]} · installs as {partial['name']}")


class InstalledCard(Card):
    def __init__(self, model: dict, panel: ModelsDock):
        super().__init__(model["name"])
        self.name = model["name"]
        self.panel = panel
        self.loaded = self.badge("In use", "info")
        self.loaded.setVisible(panel.loaded_model == model["name"])
        if model.get("substitute_bytes"):
            self.badge("Substitutes cached", "good").setToolTip(
                "SubSpec's 4-bit draft layers are built and cached: the draft loads without quantizing")
        self.convert_button = self.button(
            "Build substitutes", lambda: panel.manager.convert(self.name),
            "Quantize every layer to 4-bit HQQ once and cache it on disk, so SubSpec's draft loads fast")
        self.cancel_button = self.button("Cancel", self._cancel_convert, "Stop after the current layer; the "
                                                                           "layers built so far stay cached")
        self.delete_button = self.button("Delete", lambda: panel.delete(model),
                                         "Delete the model and its substitute cache")
        self.facts = self.line(text.model_facts(model), "")
        self.disk = self.line(text.disk_facts(model))
        self.source = self.line(text.source_text(model))
        self.bar = self.progress_bar()
        self.status = self.line("")
        self.error = self.line("", ERROR)
        self.job: dict | None = None
        self.show_convert(None)

    def _cancel_convert(self) -> None:
        if self.job is not None:
            self.panel.manager.cancel(self.job["id"])

    def show_convert(self, job: dict | None) -> None:
        self.job = job
        active = bool(job and job["active"])
        self.convert_button.setVisible(not active)
        self.cancel_button.setVisible(active and job["state"] != "cancelling")
        self.delete_button.setEnabled(not active)
        self.bar.setVisible(active)
        if active:
            if job["fraction"] is None:
                self.bar.setRange(0, 0)
            else:
                self.bar.setRange(0, 1000)
                self.bar.setValue(round(1000 * job["fraction"]))
        self.status.setText(f"{text.job_status(job)}: {job['message']}" if job and job["message"] else "")
        self.status.setVisible(bool(self.status.text()))
        self.error.setText(job["error"] if job else "")
        self.error.setVisible(bool(job and job["error"]))


class ModelsDock(QDockWidget):
    def __init__(self, manager: ModelManager, hardware=None, parent: QWidget | None = None):
        """`hardware`: the window's app.hardware_panel.HardwareDock, whose probe the fit badges use."""
        super().__init__("Models", parent)
        self.setObjectName("models")
        self.manager = manager
        self.hardware = hardware
        self.profile: dict | None = None
        self.inventory: dict | None = None
        self.loaded_model: str | None = None
        self.estimates: dict[str, object] = {}
        self._hooked = False
        self._build()
        manager.job_changed.connect(self._on_job)
        manager.job_removed.connect(self._on_job_removed)
        manager.inventory.connect(self.set_inventory)
        manager.search_done.connect(self._on_search_done)
        manager.config_found.connect(self._on_config_found)
        manager.notice.connect(self._on_notice)
        manager.gguf_choice_needed.connect(self._choose_gguf)
        self.visibilityChanged.connect(self._on_visibility)
        if manager.last_inventory is not None:
            self.set_inventory(manager.last_inventory)
        for job in list(manager.jobs.values()):
            self._on_job(dict(job.snapshot))

    # --- building ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(6)
        self.summary = _label("Reading the model store …", MUTED)
        layout.addWidget(self.summary)
        self.notice = _label("")
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()
        layout.addWidget(self.notice)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        layout.addWidget(self.tabs, 1)

        # Recommended
        from engine.catalogue import CATALOGUE

        self.catalogue_cards = [CatalogueCard(e, self) for e in CATALOGUE]
        self.catalogue = CardList("")
        self.catalogue_note = _label("Chat models that SubSpec runs well, and how each would run on this "
                                     "computer (estimated before downloading, from the model's config).", MUTED)
        self.catalogue.layout_.insertWidget(0, self.catalogue_note)
        self.catalogue.layout_.removeWidget(self.catalogue.placeholder)
        self.catalogue.placeholder.hide()
        for card in self.catalogue_cards:
            self.catalogue.add(card)
        self.tabs.addTab(self.catalogue, "Recommended")

        # Search
        search = QWidget()
        search_layout = QVBoxLayout(search)
        search_layout.setContentsMargins(2, 8, 2, 0)
        row = QHBoxLayout()
        self.query = QLineEdit()
        self.query.setAccessibleName("Search Hugging Face models")
        self.query.setPlaceholderText("Search Hugging Face for text-generation models, e.g. qwen2.5 instruct")
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        row.addWidget(self.query, 1)
        row.addWidget(self.search_button)
        search_layout.addLayout(row)
        self.token = QLineEdit()
        self.token.setAccessibleName("Hugging Face token")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("Hugging Face token, for gated models (optional)")
        self.token.setToolTip("Used for searches and downloads until the app closes; never saved. Without "
                              "it, HF_TOKEN or the token of `hf auth login` is used.")
        self.token.setClearButtonEnabled(True)
        self.token.textChanged.connect(lambda text: setattr(self.manager, "token", text.strip() or None))
        search_layout.addWidget(self.token)
        self.search_status = _label("", MUTED)
        self.search_status.hide()
        search_layout.addWidget(self.search_status)
        self.results = CardList("Results appear here. Downloads fetch the safetensors weights and the "
                                "tokenizer, verified against the hub's checksums.")
        search_layout.addWidget(self.results, 1)
        self.tabs.addTab(search, "Search")

        # Downloads
        self.downloads = CardList("No downloads. Pick a model under Recommended or Search.")
        self.partials_header = _section("Paused downloads from earlier")
        self.partials_header.hide()
        self.downloads.layout_.insertWidget(self.downloads.layout_.count() - 1, self.partials_header)
        self.partial_cards: list[PartialCard] = []
        self.job_cards: dict[int, JobCard] = {}
        self.tabs.addTab(self.downloads, "Downloads")

        # Installed
        installed = QWidget()
        installed_layout = QVBoxLayout(installed)
        installed_layout.setContentsMargins(2, 8, 2, 0)
        row = QHBoxLayout()
        self.import_folder_button = QPushButton("Import folder …")
        self.import_folder_button.setToolTip("A Hugging Face model folder: config.json, tokenizer and safetensors")
        self.import_folder_button.clicked.connect(self.import_folder)
        self.import_gguf_button = QPushButton("Import GGUF …")
        self.import_gguf_button.setToolTip("A .gguf file (Llama, Mistral, Qwen2, Qwen3), converted to bf16 "
                                           "safetensors; for a split one (…-00001-of-00003.gguf), any part, "
                                           "with the others beside it")
        self.import_gguf_button.clicked.connect(self.import_gguf)
        row.addWidget(self.import_folder_button)
        row.addWidget(self.import_gguf_button)
        row.addStretch(1)
        installed_layout.addLayout(row)
        self.installed = CardList("No models installed yet.")
        installed_layout.addWidget(self.installed, 1)
        self.installed_cards: dict[str, InstalledCard] = {}
        self.tabs.addTab(installed, "Installed")

        self.setWidget(body)

    # --- showing ----------------------------------------------------------------------------------------
    def _on_visibility(self, visible: bool) -> None:
        if not visible:
            return
        self.manager.rescan()  # cheap, and the CLI may have changed the store meanwhile
        self._want_profile()
        window = self.parent()
        if isinstance(window, QMainWindow) and not self.isFloating() and self.width() < WIDTH:
            window.resizeDocks([self], [WIDTH], Qt.Orientation.Horizontal)

    def _want_profile(self) -> None:
        """The hardware panel's probe (started if it never ran), and its answers from then on."""
        if self.hardware is None:
            return
        if self.hardware.profile is not None:
            self.set_profile(self.hardware.planning_profile())
        self.hardware.refresh()  # creates its hardware thread the first time
        if not self._hooked and self.hardware.host is not None:
            self._hooked = True
            self.hardware.host.profile.connect(lambda _p: self.set_profile(self.hardware.planning_profile()))
            self.hardware.reserve_slider.valueChanged.connect(lambda _v: self._estimate())

    def ready(self) -> bool:
        """Everything a screenshot should show has arrived: the store's scan and, with a hardware panel,
        the badges."""
        return self.inventory is not None and not self.manager.scanning and \
            (self.hardware is None or bool(self.estimates))

    def set_profile(self, profile: dict | None) -> None:
        if profile is None:
            return
        self.profile = profile
        self._estimate()

    def _reserve_gb(self) -> float:
        """The Hardware panel's reserve slider (make_plan's default without that panel)."""
        return self.hardware.reserve_gb() if self.hardware is not None else 0.5

    def _estimate(self) -> None:
        from engine.catalogue import estimate

        if self.profile is None:
            return
        reserve = self._reserve_gb()
        for card in self.catalogue_cards:
            try:
                est = estimate(card.entry, self.profile, reserve_gb=reserve)
            except Exception as exc:  # noqa: BLE001 - one odd profile must not blank the whole list
                card.fit.set("Unknown", "neutral")
                card.fit.setToolTip(f"{type(exc).__name__}: {exc}")
                continue
            self.estimates[card.entry.repo_id] = est
            card.set_estimate(est)
        for hit in self.results.items:
            self._estimate_hit(hit)

    def _on_config_found(self, found: dict) -> None:
        for hit in self.results.items:
            if hit.repo_id == found["repo_id"]:
                if found["config"] is None:
                    hit.fit.set("Fit unknown", "neutral")
                    hit.fit.setToolTip(found["error"])
                else:
                    hit.config = found["config"]
                    self._estimate_hit(hit)

    def _estimate_hit(self, hit) -> None:
        from engine.catalogue import estimate_config

        if self.profile is None or hit.config is None:
            return
        reserve = self._reserve_gb()
        try:
            _show_fit(hit.fit, estimate_config(hit.repo_id, hit.config, self.profile, reserve_gb=reserve))
        except Exception as exc:  # noqa: BLE001 - one odd config must not break the list
            hit.fit.set("Fit unknown", "neutral")
            hit.fit.setToolTip(f"{type(exc).__name__}: {exc}")

    def set_loaded_model(self, name: str | None) -> None:
        self.loaded_model = name
        if self.inventory is not None:
            self.manager.rescan()  # the first load imports the default model into the store
        for card_name, card in self.installed_cards.items():
            card.loaded.setVisible(card_name == name)

    def _on_notice(self, notice: dict) -> None:
        self.notice.setText(notice["message"])
        theme.set_tone(self.notice, "ok" if notice["ok"] else ERROR)
        self.notice.show()

    # --- the store --------------------------------------------------------------------------------------
    def installed_repo(self, repo_id: str) -> bool:
        return any(m.get("repo_id", "").lower() == repo_id.lower() for m in (self.inventory or {}).get("models", []))

    def set_inventory(self, inventory: dict) -> None:
        self.inventory = inventory
        models = inventory.get("models", [])
        if inventory.get("error"):
            self.summary.setText(f"Cannot read the model store: {inventory['error']}")
            theme.set_tone(self.summary, ERROR)
        else:
            theme.set_tone(self.summary, MUTED)
            self.summary.setText(
                f"{text.count_text(len(models), 'model')} installed · {text.human_bytes(inventory['total_bytes'])} "
                f"used · {text.human_bytes(inventory['free_bytes'])} free in {inventory['root']}")
        self.installed_cards = {m["name"]: InstalledCard(m, self) for m in models}
        self.installed.set_items(list(self.installed_cards.values()))
        for job in self.manager.jobs.values():
            if job.snapshot["kind"] == "convert" and job.snapshot["name"] in self.installed_cards:
                self.installed_cards[job.snapshot["name"]].show_convert(dict(job.snapshot))
        self.tabs.setTabText(3, f"Installed ({len(models)})")
        self._show_partials(inventory.get("partials", []))
        self._refresh_actions()

    def _show_partials(self, partials: list[dict]) -> None:
        for card in self.partial_cards:
            self.downloads.layout_.removeWidget(card)
            card.deleteLater()
        # A download this session paused or failed has its own card already.
        own = {(j.snapshot["repo_id"].lower(), j.snapshot.get("gguf")) for j in self.manager.jobs.values()
               if j.snapshot["kind"] == "download"}
        self.partial_cards = [PartialCard(p, self) for p in partials
                              if (p["repo_id"].lower(), p.get("gguf")) not in own]
        at = self.downloads.layout_.indexOf(self.partials_header) + 1
        for i, card in enumerate(self.partial_cards):
            self.downloads.layout_.insertWidget(at + i, card)
        self.partials_header.setVisible(bool(self.partial_cards))
        self._update_downloads_tab()

    def _update_downloads_tab(self) -> None:
        active = sum(1 for j in self.manager.jobs.values() if j.snapshot["active"] and j.snapshot["kind"] != "convert")
        waiting = len(self.partial_cards) + sum(1 for j in self.manager.jobs.values()
                                                if j.snapshot["state"] == "paused")
        self.downloads.placeholder.setVisible(not self.job_cards and not self.partial_cards)
        label = "Downloads"
        if active or waiting:
            label += f" ({active or waiting})"
        self.tabs.setTabText(2, label)

    def _refresh_actions(self) -> None:
        for card in self.catalogue_cards:
            _set_action(card.action, card.entry.repo_id, self)
        for card in self.results.items:
            if isinstance(card, HitCard):
                _set_action(card.action, card.repo_id, self)

    # --- jobs -------------------------------------------------------------------------------------------
    def _on_job(self, job: dict) -> None:
        if job["kind"] == "convert":
            card = self.installed_cards.get(job["name"])
            if card is not None:
                card.show_convert(job)
            return
        card = self.job_cards.get(job["id"])
        if card is None:
            card = self.job_cards[job["id"]] = JobCard(job, self)
            self.downloads.add(card)  # above the partials' header: cards go in after the last card
        else:
            card.update_job(job)
        if job["kind"] == "download" and job["repo_id"]:
            self.partial_cards = [p for p in self.partial_cards
                                  if not self._drop_partial(p, job["repo_id"], job.get("gguf"))]
            self.partials_header.setVisible(bool(self.partial_cards))
        self._update_downloads_tab()
        self._refresh_actions()

    def _drop_partial(self, card: PartialCard, repo_id: str, gguf: str | None) -> bool:
        if card.repo_id.lower() != repo_id.lower() or card.gguf != gguf:
            return False
        self.downloads.layout_.removeWidget(card)
        card.deleteLater()
        return True

    def _on_job_removed(self, jid: int) -> None:
        card = self.job_cards.pop(jid, None)
        if card is not None:
            self.downloads.remove(card)
        self._update_downloads_tab()
        self._refresh_actions()

    # --- actions ----------------------------------------------------------------------------------------
    def _free_name(self, default: str) -> str | None:
        """`default`, or when a model has that name already (or a download or import will install one
        under it), another one from the user (None: cancelled)."""
        names = set(self.manager.installed_names()) | self.manager.pending_names()
        name = default
        while name in names:
            answer = dialogs.ask_text(self, "Name in use", f"A model named {name} is installed already, or "
                                      "a download or import will install one. Install the new one as:",
                                      f"{default}-2")
            if not answer:
                return None
            name = answer.strip()
        return name

    def download(self, repo_id: str, revision: str | None = None, name: str | None = None,
                 gguf: str | None = None) -> int | None:
        if self.manager.download_job(repo_id, gguf) is None:  # None: only the repo's choice-less download
            from engine.gguf_import import model_name

            default = model_name(Path(gguf + ".gguf")) if gguf else repo_id.split("/")[-1]
            name = self._free_name(name or default)
            if name is None:
                return None
        jid = self.manager.download(repo_id, revision, name, gguf)
        self.tabs.setCurrentIndex(2)
        return jid

    def _choose_gguf(self, choice: dict) -> None:
        """A repo of GGUF files only: which one (LM Studio's quantization list), then its download."""
        labels = list(choice["choices"])
        items = [f"{label}  ({text.human_bytes(size)})" for label, size in choice["choices"].items()]
        picked = dialogs.choose_item(self, "Choose a GGUF", f"{choice['repo_id']} has only GGUF files, no "
                                     "safetensors weights.\nDownload which one? It is converted to bf16 once "
                                     "verified,\nabout 2-4x its size on disk.", items)
        if picked is not None:
            self.download(choice["repo_id"], choice["revision"], None, labels[picked])

    def resume_partial(self, partial: dict) -> None:
        self.download(partial["repo_id"], partial["commit"], partial["name"], partial.get("gguf"))

    def discard_partial(self, partial: dict) -> None:
        if dialogs.confirm(self, "Discard download",
                           f"Delete the {text.human_bytes(partial['have_bytes'])} already downloaded of "
                           f"{partial['repo_id']}?"):
            self.manager.discard_partial(partial["repo_id"], partial.get("gguf"))

    def search(self) -> None:
        query = self.query.text().strip()
        if not query:
            return
        theme.set_tone(self.search_status, MUTED)
        self.search_status.setText(f"Searching for “{query}” …")
        self.search_status.show()
        self.search_button.setEnabled(False)
        self.manager.search(query)

    def _on_search_done(self, result: dict) -> None:
        self.search_button.setEnabled(True)
        if result["error"]:
            theme.set_tone(self.search_status, ERROR)
            self.search_status.setText(result["error"])
            self.results.set_items([])
            return
        hits = result["hits"]
        theme.set_tone(self.search_status, MUTED)
        self.search_status.setText(f"{text.count_text(len(hits), 'model')} for “{result['query']}”, most "
                                   "downloaded first" if hits else f"No text-generation models match "
                                   f"“{result['query']}”.")
        self.results.set_items([HitCard(h, self) for h in hits])
        self._refresh_actions()

    def import_folder(self) -> None:
        path = choose_folder(self)
        if path:
            self._import(path)

    def import_gguf(self) -> None:
        path = choose_gguf(self)
        if path:
            self._import(path)

    def _import(self, path: str) -> None:
        name = self._free_name(text.default_import_name(path))
        if name is not None:
            self.manager.import_model(path, name)
            self.tabs.setCurrentIndex(2)

    def delete(self, model: dict) -> None:
        name = model["name"]
        freed = (model.get("size_bytes") or 0) + (model.get("substitute_bytes") or 0)
        loaded = (f"\n\n{name} is in use: the chat keeps it until another model is loaded."
                  if name == self.loaded_model else "")
        if not dialogs.confirm(self, "Delete model", f"Delete {name} and its substitute cache? This frees "
                                                     f"{text.human_bytes(freed)} and cannot be undone.{loaded}"):
            return
        card = self.installed_cards.get(name)
        if card is not None:
            card.delete_button.setEnabled(False)
            card.convert_button.setEnabled(False)
            card.status.setText("Deleting …")
            card.status.show()
        self.manager.delete_model(name)

