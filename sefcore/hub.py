"""Resolving a model or weights reference to local files: a local path, an http(s) URL, or a Hugging Face Hub id.

Everything that accepts weights goes through here, so "not found" reads the same everywhere and says what was
tried. Hub downloads use huggingface_hub's cache (``HF_HOME``); URLs are cached under ``~/.cache/sef/urls``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sefcore.errors import SefError

if TYPE_CHECKING:
    import torch


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "check_repo_id",
    "file_sha256",
    "hub_offline_unless_reachable",
    "hub_reachable",
    "load_state_dict",
    "network_failure",
    "require_hub_repo",
    "resolve_dir",
    "resolve_file",
    "revision_of",
    "staged_files",
    "upload_folder",
]

_REVISION_IN_PATH = re.compile(r"/snapshots/([0-9a-f]{40})/")


def _hub_error(what: str, ref: str, err: Exception) -> SefError:
    reason = network_failure(err)
    if reason:
        return SefError(f"cannot fetch {what} {ref!r} from the Hugging Face Hub ({reason}); give a local path instead")
    return SefError(
        f"{what} {ref!r} is not a local path, and fetching it from the Hugging Face Hub failed "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
        "Check the path or id, or run where the Hub is reachable (HF_HUB_OFFLINE unset)."
    )


# ---- reaching the Hub ------------------------------------------------------------------------------------------

_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub endpoint (``HF_ENDPOINT``) answers at all, asked once per process: a single
    request without retries, so an offline machine learns it in milliseconds instead of after a minute of retries.
    False in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(endpoint, timeout=timeout, follow_redirects=False)
            _REACHABLE[endpoint] = True
        except Exception:  # any transport failure (DNS, refused, timeout, proxy) means "not reachable"
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


@contextlib.contextmanager
def hub_offline_unless_reachable() -> Iterator[bool]:
    """Run the body with huggingface_hub in offline mode when the Hub cannot be reached: files already in the cache
    still load, anything else fails at once (``LocalEntryNotFoundError``) instead of after retries. Yields whether
    the Hub is reachable."""
    from huggingface_hub import constants

    if hub_reachable():
        yield True
        return
    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # the switch huggingface_hub, transformers and diffusers all read
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = was


def require_hub_repo(ref: str, what: str, *, cached_file: str = "config.json") -> None:
    """Check, without downloading, that ``ref`` (not a local path) can name a Hub repo here: a valid id
    ``OWNER/NAME``, and the Hub reachable or the repo's ``cached_file`` in the local cache. Raises SefError at once
    otherwise (instead of a minute of retries and a transport error)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise SefError(f"no {what} at {ref}: not a local folder, and not a Hub repo id of the form OWNER/NAME")
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise SefError(f"no {what} at {ref}: not a local folder, and not a valid Hub repo id") from None
    if not hub_reachable() and not isinstance(try_to_load_from_cache(ref, cached_file), str):
        raise SefError(
            f"no {what} at {ref}: not a local folder, and the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE is "
            f"set) to look it up there; give a local folder"
        )


def network_failure(err: BaseException) -> str | None:
    """A short reason when ``err`` (or an exception it was raised from) means a server could not be reached or a
    file was neither cached nor fetchable offline; None for any other error (a refusal, a missing repo, a bug)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LocalEntryNotFoundError):
            return "not in the local cache, and the Hub is unreachable or HF_HUB_OFFLINE is set"
        if isinstance(e, OfflineModeIsEnabled):
            return "the Hub is unreachable or HF_HUB_OFFLINE is set"
        mro = {(c.__module__.split(".")[0], c.__name__) for c in type(e).__mro__}
        if any(mod in ("httpx", "httpx2", "httpcore", "requests", "urllib3") and name in (
                "TransportError", "ConnectionError", "TimeoutException", "ConnectError", "NetworkError",
                "ProxyError", "Timeout", "NewConnectionError", "MaxRetryError") for mod, name in mro):  # fmt: skip
            detail = str(e).splitlines()[0] if str(e) else ""
            return f"the Hub is unreachable: {type(e).__name__}{': ' + detail if detail else ''}"
        if isinstance(e, (ConnectionError, TimeoutError)) and not isinstance(e, BrokenPipeError):
            return f"the network is unreachable: {type(e).__name__}: {e}"
        e = e.__cause__ or e.__context__
    return None


def revision_of(path: Path) -> str | None:
    """The Hub commit a cached file or snapshot folder came from, if it came from the Hub cache."""
    m = _REVISION_IN_PATH.search(str(path.resolve()) + "/")
    return m.group(1) if m else None


def resolve_file(ref: str, *, what: str = "weights", revision: str | None = None, sha256: str | None = None) -> Path:
    """A local file for ``ref``: a path, an http(s) URL, or a Hub file ``owner/repo/path/in/repo.ext``
    (also ``hf://owner/repo/path``). With ``sha256`` (a preset's pin), the file must have that hash: a mismatch is
    an error before anything is loaded, and a mismatching download is removed from the cache."""
    path = _resolve_file(ref, what, revision)
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            downloaded = ref.startswith(("http://", "https://")) and not Path(ref).expanduser().is_file()
            if downloaded:
                path.unlink(missing_ok=True)  # a retry downloads it again
            raise SefError(
                f"{what} {ref!r} has sha256 {actual}, but it is pinned to {sha256}: "
                + ("the download is corrupt or the file changed upstream (removed from the cache). " if downloaded
                   else "this is not the pinned file. ")
                + "Nothing was loaded; to use this file anyway, name it yourself (weights=PATH) instead of the preset."
            )  # fmt: skip
    return path


def _resolve_file(ref: str, what: str, revision: str | None) -> Path:
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise SefError(f"{what} {ref!r} is a folder; give the checkpoint file inside it")
    if ref.startswith(("http://", "https://")):
        cache = Path(os.environ.get("SEF_CACHE", Path.home() / ".cache" / "sef")) / "urls"
        target = cache / hashlib.sha256(ref.encode()).hexdigest()[:16] / Path(ref.split("?")[0]).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            import torch

            try:
                torch.hub.download_url_to_file(ref, str(target), progress=True)
            except Exception as e:  # network errors come in many types
                raise SefError(f"{what} URL {ref!r} could not be downloaded ({type(e).__name__}: {e})") from None
        return target
    parts = ref.removeprefix("hf://").strip("/").split("/")
    if len(parts) >= 3 and not ref.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision))
        except Exception as e:
            raise _hub_error(what, ref, e) from None
    raise SefError(
        f"{what} {ref!r} not found: it is not a local file, an http(s) URL, or a Hub file id "
        "of the form owner/repo/file.ext"
    )


def resolve_dir(
    ref: str, *, what: str = "model", revision: str | None = None, patterns: list[str] | None = None
) -> Path:
    """A local folder for ``ref``: a local folder, or a Hub repo id ``owner/name`` (snapshot, optionally filtered)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SefError(f"{what} {ref!r} is a file; a folder or a Hub repo id was expected")
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(ref, revision=revision, allow_patterns=patterns))
        except Exception as e:
            raise _hub_error(what, ref, e) from None
    raise SefError(f"{what} {ref!r} not found: it is neither a local folder nor a Hub repo id (owner/name)")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load checkpoint tensors without executing code: safetensors, or a torch pickle with weights_only=True."""
    import torch
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SefError(
            f"cannot read checkpoint {str(path)!r} as plain tensors ({type(e).__name__}). Only safetensors and "
            "weights-only torch files are loaded: full pickles can run arbitrary code."
        ) from None
    if not isinstance(sd, dict):
        raise SefError(f"checkpoint {str(path)!r} holds a {type(sd).__name__}, not a state dict")
    return sd


def check_repo_id(repo_id: str) -> None:
    """Refuse anything but USER/NAME before any work is done for an upload."""
    if repo_id.count("/") != 1:
        raise SefError(f"--repo {repo_id!r}: expected USER/NAME")


def staged_files(folder: Path) -> list[str]:
    """Every file below ``folder``, as sorted relative POSIX paths: what an upload of it sends."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def upload_folder(
    folder: Path,
    repo_id: str,
    *,
    repo_type: str,
    private: bool = False,
    revision: str | None = None,
    message: str,
    api=None,
) -> None:
    """Create ``repo_id`` if needed (and the ``revision`` branch) and upload ``folder`` to it.

    ``HfApi.upload_folder`` commits large folders in batches and resumes an interrupted upload when run again. The
    token comes from the usual login or ``HF_TOKEN``; it is never printed. ``api`` replaces ``HfApi()`` (tests)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    api = api or HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, repo_type=repo_type, folder_path=str(folder), revision=revision, commit_message=message
        )
    except HfHubHTTPError as e:
        raise SefError(f"upload to {repo_id} failed: {str(e).splitlines()[0]} (log in with `hf auth login`)") from None
    except Exception as e:
        reason = network_failure(e)
        if reason is None and not isinstance(e, OSError):
            raise
        raise SefError(
            f"cannot upload to {repo_id} ({reason or f'{type(e).__name__}: {e}'}); the staged folder {folder} is "
            "kept: run the same command again once the Hub is reachable (it resumes), or --dry-run to stage only"
        ) from None
