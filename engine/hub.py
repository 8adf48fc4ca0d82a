"""The Hugging Face hub as the model manager sees it: search, a repo's files with their checksums, the
address of one file. Metadata goes through huggingface_hub (auth, `HF_ENDPOINT`, proxies); the bytes are
fetched by `download.py`, which adds what huggingface_hub lacks (resume across runs, verified checksums).

The endpoint is read on every call, not at import: huggingface_hub freezes `HF_ENDPOINT` when it is first
imported, and transformers imports it long before a user types a search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from .errors import SubspecError

DEFAULT_ENDPOINT = "https://huggingface.co"
# Files a model needs besides its safetensors weights (the store copies the same set on import).
AUX_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
             "vocab.json", "merges.txt", "added_tokens.json", "model.safetensors.index.json")
SHARD_INDEX = "model.safetensors.index.json"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def token(explicit: str | None = None) -> str | None:
    """An explicit token, else HF_TOKEN, else the one `hf auth login` stored (huggingface_hub finds it)."""
    if explicit:
        return explicit
    from huggingface_hub import get_token

    return get_token()


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS files (the weights): the hub gives their sha256
    git_sha1: str | None  # small files: their git blob id, sha1 over "blob <size>\0" + content

    @property
    def checksum(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"git-sha1:{self.git_sha1}"


@dataclass(frozen=True)
class RemoteModel:
    repo_id: str
    commit: str  # downloads pin the commit, so a push during a download cannot mix two versions
    files: tuple[RemoteFile, ...]
    gated: bool

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


@dataclass(frozen=True)
class SearchHit:
    repo_id: str
    downloads: int
    likes: int
    updated: str
    pipeline_tag: str | None

    def as_json(self) -> dict:
        return dict(self.__dict__)


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


def _hub_error(exc: Exception, what: str) -> SubspecError:
    """huggingface_hub's and httpx's exceptions -> one clear sentence for the user."""
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.GatedRepoError):
        return SubspecError(f"{what} is gated: accept its licence on {endpoint()}/{what} and pass a token "
                            f"(--token, HF_TOKEN or `hf auth login`)")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return SubspecError(f"no model {what!r} on {endpoint()} (a private repo needs a token)")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return SubspecError(f"{what}: no such revision on {endpoint()}")
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return SubspecError("offline mode is on (HF_HUB_OFFLINE): unset it to reach the hub")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return SubspecError(f"the hub answered an error for {what}: {exc}".splitlines()[0])
    return SubspecError(f"cannot reach {endpoint()}: {type(exc).__name__}: {exc}")


def _hub_exceptions() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub import errors as hf_errors

    return (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, httpx2.HTTPError, OSError)


def search(query: str, limit: int = 20, token_: str | None = None) -> list[SearchHit]:
    """Text-generation models matching `query`, most downloaded first."""
    try:
        models = list(_api().list_models(search=query, limit=limit, sort="downloads",
                                         pipeline_tag="text-generation", token=token(token_)))
    except _hub_exceptions() as exc:
        raise _hub_error(exc, query) from exc
    hits = []
    for m in models:
        updated = m.last_modified.isoformat(timespec="minutes") if isinstance(m.last_modified, datetime) else ""
        hits.append(SearchHit(m.id, int(m.downloads or 0), int(m.likes or 0), updated, m.pipeline_tag))
    return hits


def remote_model(repo_id: str, revision: str | None = None, token_: str | None = None) -> RemoteModel:
    """A repo's files with sizes and checksums, at one commit."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SubspecError(f"{repo_id!r} is not a hub repo id (like 'Qwen/Qwen2.5-7B-Instruct')")
    try:
        info = _api().model_info(repo_id, revision=revision, files_metadata=True, token=token(token_))
    except _hub_exceptions() as exc:
        raise _hub_error(exc, repo_id) from exc
    files = []
    for s in info.siblings or []:
        if s.size is None:
            raise SubspecError(f"{endpoint()} gave no size for {repo_id}/{s.rfilename}")
        files.append(RemoteFile(s.rfilename, int(s.size), s.lfs.sha256 if s.lfs else None, s.blob_id))
    if not info.sha:
        raise SubspecError(f"{endpoint()} gave no commit for {repo_id}")
    return RemoteModel(repo_id, info.sha, tuple(files), bool(info.gated))


def needed_files(model: RemoteModel, index: dict | None = None) -> list[RemoteFile]:
    """What a model needs to run here: safetensors weights and the small files beside them. With the repo's
    shard `index` (`remote_index`), only the shards it lists: some repos also ship the same weights in
    another layout beside them (Mistral's consolidated.safetensors: 14.5 GB the loader never reads)."""
    weights = [f for f in model.files if f.name.endswith(".safetensors") and "/" not in f.name]
    if index is not None:
        weights = _indexed_shards(model, index)
    if not weights:
        if gguf_sets(model):
            raise GGUFChoiceNeeded(model)
        other = sorted({f.name.rsplit(".", 1)[-1] for f in model.files if f.name.endswith((".bin", ".pt"))})
        hint = f" (it has {', '.join('.' + o for o in other)} files; look for a safetensors version)" if other else ""
        raise SubspecError(f"{model.repo_id} has no safetensors weights{hint}")
    aux = [f for f in model.files if f.name in AUX_FILES]
    if not any(f.name == "config.json" for f in aux):
        raise SubspecError(f"{model.repo_id} has no config.json")
    return sorted(aux, key=lambda f: (f.name != "config.json", f.name)) + sorted(weights, key=lambda f: f.name)


def _indexed_shards(model: RemoteModel, index: dict) -> list[RemoteFile]:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise SubspecError(f"{model.repo_id}/{SHARD_INDEX} has no usable weight_map")
    names = set(weight_map.values())
    have = {f.name: f for f in model.files}
    missing = sorted(n for n in names if n not in have)
    if missing:
        raise SubspecError(f"{model.repo_id}/{SHARD_INDEX} lists shards the repo does not have: {', '.join(missing)}")
    return [have[n] for n in names]


def gguf_sets(model: RemoteModel) -> dict[str, list[RemoteFile]]:
    """A repo's GGUF models, {label: files}: a single file, or every part of a split one in order, under
    its path without the part suffix and ".gguf" (e.g. "Qwen2.5-7B-Instruct-Q8_0"). Vision projectors
    (mmproj) are not language models and are left out."""
    from .gguf_import import SPLIT_NAME

    sets: dict[str, list[RemoteFile]] = {}
    for f in model.files:
        folder, _, base = f.name.rpartition("/")
        if not base.lower().endswith(".gguf") or base.lower().startswith("mmproj"):
            continue
        match = SPLIT_NAME.match(base)
        label = (folder + "/" if folder else "") + (match["stem"] if match else base[: -len(".gguf")])
        sets.setdefault(label, []).append(f)
    return {label: sorted(files, key=lambda f: f.name) for label, files in sorted(sets.items())}


class GGUFChoiceNeeded(SubspecError):
    """A repo of GGUF files only: which one to download must be chosen (`choices`: {label: total bytes})."""

    def __init__(self, model: RemoteModel, asked: str | None = None):
        self.repo_id = model.repo_id
        self.choices = {label: sum(f.size for f in files) for label, files in gguf_sets(model).items()}
        listed = ", ".join(f"{label} ({size / 1e9:.1f} GB)" for label, size in self.choices.items())
        why = (f"no single GGUF of {model.repo_id} matches {asked!r}" if asked else
               f"{model.repo_id} has GGUF files, no safetensors: choose one")
        super().__init__(f"{why} (--gguf NAME, a label or a part of one such as Q8_0): {listed}")


def gguf_files(model: RemoteModel, choice: str) -> tuple[str, list[RemoteFile]]:
    """(label, files) of the GGUF `choice` names: its label, or a part of exactly one label, any case ("q8_0").
    Refused (GGUFChoiceNeeded, listing the labels) when it names none or several; a split GGUF whose
    parts are not all on the hub is refused too."""
    from .gguf_import import SPLIT_NAME

    sets = gguf_sets(model)
    want = choice.lower()
    exact = [label for label in sets if label.lower() == want]
    found = exact or [label for label in sets if want in label.lower()]
    if len(found) != 1:
        raise GGUFChoiceNeeded(model, choice)
    files = sets[found[0]]
    match = SPLIT_NAME.match(files[0].name.rpartition("/")[2])
    if match and len(files) != int(match["count"]):
        raise SubspecError(f"{model.repo_id}: {found[0]} is split in {int(match['count'])} parts but the hub has "
                           f"{len(files)} of them")
    return found[0], files


def remote_config(repo_id: str, revision: str = "main", token_: str | None = None,
                  timeout_s: float = 15.0, gguf: bool = False) -> dict:
    """A repo's config.json (a few KB): enough for the planner to say whether the model fits here,
    before anything big is downloaded. With `gguf`, a repo of GGUF files only answers from the header of
    its smallest GGUF instead (a few MB: mostly the vocabulary; `remote_gguf_config`)."""
    config = _remote_json(repo_id, revision, "config.json", token_, timeout_s)
    if config is None:
        if gguf:
            return remote_gguf_config(repo_id, revision, token_, timeout_s)
        raise SubspecError(f"{repo_id} has no config.json")
    return config


def remote_index(model: RemoteModel, token_: str | None = None, timeout_s: float = 15.0) -> dict | None:
    """The repo's shard index (model.safetensors.index.json) at the model's commit, or None without one."""
    if not any(f.name == SHARD_INDEX for f in model.files):
        return None
    index = _remote_json(model.repo_id, model.commit, SHARD_INDEX, token_, timeout_s)
    if index is None:
        raise SubspecError(f"{model.repo_id} lists {SHARD_INDEX} but the hub has no such file")
    return index


def _remote_json(repo_id: str, revision: str, name: str, token_: str | None, timeout_s: float) -> dict | None:
    """A small JSON object from a repo; None when the repo has no such file."""
    import json

    import httpx2
    from huggingface_hub.utils import get_session

    try:
        r = get_session().get(file_url(repo_id, revision, name), headers=auth_headers(token_),
                              timeout=timeout_s, follow_redirects=True)
    except _hub_exceptions() as exc:
        raise _hub_error(exc, repo_id) from exc
    if r.status_code in (401, 403):
        raise SubspecError(f"{repo_id} is gated or private: its {name} needs a token")
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise SubspecError(f"the hub answered {r.status_code} for {repo_id}/{name}")
    try:
        value = json.loads(r.content)
    except (ValueError, httpx2.HTTPError) as exc:
        raise SubspecError(f"{repo_id}/{name} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise SubspecError(f"{repo_id}/{name} is not a JSON object")
    return value


def remote_gguf_config(repo_id: str, revision: str = "main", token_: str | None = None,
                       timeout_s: float = 15.0) -> dict:
    """config.json's fields (engine.gguf_header.config_from_header) from the header of the first part of a
    repo's smallest GGUF, read through one request cut off after it. "_gguf" names the file read."""
    from huggingface_hub.utils import get_session

    from .gguf_header import config_from_header, read_header

    model = remote_model(repo_id, None if revision == "main" else revision, token_)
    sets = gguf_sets(model)
    if not sets:
        raise SubspecError(f"{repo_id} has no config.json and no GGUF files")
    first = min(sets.values(), key=lambda files: sum(f.size for f in files))[0]
    try:
        with get_session().stream("GET", file_url(repo_id, model.commit, first.name), headers=auth_headers(token_),
                                  timeout=timeout_s, follow_redirects=True) as r:
            if r.status_code != 200:
                raise SubspecError(f"the hub answered {r.status_code} for {repo_id}/{first.name}")
            header = read_header(r.iter_bytes(), first.name)
    except _hub_exceptions() as exc:
        raise _hub_error(exc, repo_id) from exc
    return {**config_from_header(header, first.name), "_gguf": first.name}


def file_url(repo_id: str, commit: str, name: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint())


def auth_headers(token_: str | None = None) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    return build_hf_headers(token=token(token_), library_name="subspec-studio")
