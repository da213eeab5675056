"""Provider REST clients on the laptop (vast.ai, RunPod): show, destroy, poll until gone, what keeps billing."""

from __future__ import annotations

import os
from typing import Mapping, Optional

from rgt.shared.errors import BadInput

from .base import Provider, ProviderError, ProviderTimeout, destroy_and_confirm

NAMES = ("vastai", "runpod")

__all__ = ["NAMES", "Provider", "ProviderError", "ProviderTimeout", "client_for", "destroy_and_confirm"]


def client_for(name: str, env: Optional[Mapping[str, str]] = None) -> Provider:
    """The client for ``name``, keyed from the environment; BadInput when unknown or the key is missing."""
    env = os.environ if env is None else env
    if name == "vastai":
        from .vast import VastProvider as cls
    elif name == "runpod":
        from .runpod import RunPodProvider as cls
    else:
        raise BadInput(f"no API client for provider {name!r}: rgt can destroy through {', '.join(NAMES)}")
    key = env.get(cls.key_env, "").strip()
    if not key:
        raise BadInput(f"{cls.key_env} is not set: rgt needs the {cls.display} API key to destroy through the API "
                       f"(or drop --instance-id and {cls.verb} the box in the console yourself)")
    return cls(key, env.get(cls.url_env) or cls.default_url)
