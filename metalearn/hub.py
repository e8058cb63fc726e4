"""Talking to the Hugging Face Hub: fail fast when it is unreachable, and upload a saved learner.

Everything else goes through transformers, peft, datasets and huggingface_hub themselves.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["check_push", "check_reachable", "push_folder", "unreachable"]


def unreachable() -> Optional[str]:
    """None when the Hub answers one request (no retries, ``HF_HUB_ETAG_TIMEOUT``); else why it did not."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return None
    except Exception as err:  # no response at all (DNS, refused, timeout, TLS): the Hub is unreachable
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no response'}"


def check_reachable(name: str) -> None:
    """Fail in seconds when model ``name`` needs the Hub and the Hub cannot be reached.

    huggingface_hub retries an unreachable Hub for about half a minute per file, printing each retry. One
    request without retries tells first; unreachable, this raises one error that says whether the model is
    in the local cache (then ``HF_HUB_OFFLINE=1`` loads it from there) or how to bring it as a folder.
    """
    from huggingface_hub import constants
    from transformers import AutoConfig

    if constants.HF_HUB_OFFLINE:
        return  # transformers reads the local cache only, without network
    problem = unreachable()
    if problem is None:
        return
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        cached = True
    except (OSError, ValueError):
        cached = False
    fix = ("it is in the local Hugging Face cache: set HF_HUB_OFFLINE=1 to load it from there" if cached else
           f"download it where there is network (`hf download {name} --local-dir DIR`) and pass DIR, or copy a "
           "Hugging Face cache that holds it here and set HF_HUB_OFFLINE=1")
    raise ValueError(f"cannot load model {name!r}: the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                     f"({problem}); {fix}")


def check_push(repo_id: str) -> None:
    """Raise before any work unless ``repo_id`` is a valid repo name and the Hub can be reached."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"repo_id={repo_id!r} is invalid: {err}; use 'user-or-org/name'") from None
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set; unset it to upload")
    problem = unreachable()
    if problem is not None:
        raise ValueError(f"cannot push to {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                         f"({problem}); save the learner with learner.save(DIR) and upload DIR later "
                         f"(`hf upload {repo_id} DIR`)")


def push_folder(folder: str, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload meta-learned initialization") -> str:
    """Create the model repo if needed and upload ``folder`` to it; return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
