"""Talking to the Hugging Face Hub: fail fast when it is unreachable.

Everything else goes through transformers, peft, datasets and huggingface_hub themselves.
"""
from __future__ import annotations

__all__ = ["check_reachable"]


def check_reachable(name: str) -> None:
    """Fail in seconds when ``name`` needs the Hub and the Hub cannot be reached.

    huggingface_hub retries an unreachable Hub for about half a minute per file, printing each retry. One
    request without retries (under ``HF_HUB_ETAG_TIMEOUT``) tells first; unreachable, this raises one error
    that says whether the model is in the local cache (then ``HF_HUB_OFFLINE=1`` loads it from there).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    from transformers import AutoConfig

    if constants.HF_HUB_OFFLINE:
        return  # transformers reads the local cache only, without network
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return
    except Exception as err:  # no response at all (DNS, refused, timeout, TLS): the Hub is unreachable
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no response'}"
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
