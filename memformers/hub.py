"""Names a user types for a pretrained tokenizer or model: what `from_pretrained` takes, a folder or a hub id.

A name is a local folder when one exists there; otherwise, when it looks like one (`facebook/bart-base`, `gpt2`), a
Hugging Face hub id, which `from_pretrained` fetches into the hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`) or, with `HF_HUB_OFFLINE=1` (what a compute node without internet sets), reads from it.
What this module adds is the failure: a name that is neither is refused as such, and an offline id that is not in
the cache is refused with the command that puts it there (`hf download ID` on a machine with internet access,
with the same cache). A leaf module: every layer may use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class PretrainedNotFoundError(ValueError):
    """A name that is neither a folder nor a usable hub id; the message says what to do."""


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a hub id (`org/name` or `name`) rather than of a path."""
    return _HUB_ID.fullmatch(name) is not None and ".." not in name and not name.endswith((".", "-"))


def offline() -> bool:
    """Whether the hub may not be reached (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to 1/true/yes)."""
    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in variables)


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def download_hint(repo_id: str) -> str:
    return (
        f"download it where the hub can be reached, into the cache this run reads ({hub_cache()}): "
        f"`hf download {repo_id}` (or give a local folder)"
    )


def resolve(name: str, what: str, files: tuple[str, ...]) -> str:
    """`name` as `from_pretrained` should get it: an existing folder, or a hub id. Offline, a hub id must have one
    of `files` in the hub cache (none given: not checked). PretrainedNotFoundError otherwise (`what`: "tokenizer"
    or "model", for messages)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise PretrainedNotFoundError(f"{name} is a file, not a {what} folder")
    if not is_hub_id(name):
        raise PretrainedNotFoundError(
            f"{name} does not exist: give a {what} folder or a Hugging Face hub id such as facebook/bart-base"
        )
    if files and offline() and not cached(name, files):
        raise PretrainedNotFoundError(
            f"{name} is not a folder, and as a Hugging Face hub id it is not in the hub cache while HF_HUB_OFFLINE "
            f"is set: {download_hint(name)}"
        )
    return name


def config_file(name: str, what: str = "model") -> Path:
    """The `config.json` of `name` (a folder, or a hub id: fetched into the hub cache unless offline)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    resolved = resolve(name, what, ("config.json",))
    if Path(resolved).is_dir():
        return Path(resolved) / "config.json"
    try:
        return Path(hf_hub_download(resolved, "config.json", local_files_only=offline()))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        raise PretrainedNotFoundError(f"the hub repository {name} has no config.json: it is not a {what}") from None
    except (HfHubHTTPError, OSError) as error:
        raise PretrainedNotFoundError(
            f"cannot fetch {name} from the Hugging Face hub ({error.__class__.__name__}: {error}); check the id and "
            f"the network, or {download_hint(name)}"
        ) from None


def cached(repo_id: str, files: tuple[str, ...]) -> bool:
    """Whether one of `files` of the hub repository `repo_id` (its main revision) is in the hub cache."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)


def local_folder(name: str, what: str, patterns: tuple[str, ...] | None = None) -> Path:
    """A local folder holding `name`: the folder itself, or the hub repository's snapshot in the hub cache (its
    files matching `patterns`, all by default, downloaded first unless offline). PretrainedNotFoundError with what
    to do when it cannot be had."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    path = Path(name).expanduser()
    if path.is_dir():
        return path
    resolve(name, what, ())  # a path that does not exist, or a file, is refused here
    try:
        return Path(snapshot_download(name, allow_patterns=list(patterns or ["*"]), local_files_only=offline()))
    except LocalEntryNotFoundError:
        raise PretrainedNotFoundError(
            f"{name} is not a folder, and as a Hugging Face hub id it is not in the hub cache while HF_HUB_OFFLINE "
            f"is set: {download_hint(name)}"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise PretrainedNotFoundError(
            f"cannot fetch {name} from the Hugging Face hub ({error.__class__.__name__}: {error}); check the id and "
            f"the network, or {download_hint(name)}"
        ) from None
