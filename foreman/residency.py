"""Residency keys: which requests can share a loaded model without Ollama reloading it.

Ollama reloads a model when the request's runner options differ from those it was loaded
with, and it treats "llama3" and "llama3:latest" (in any letter case) as one model. The
key therefore combines the normalised name with the load-time options, and two requests
with the same key never cost a swap between them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# options that are fixed when Ollama starts a runner (changing one forces a reload)
LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")


def normalise_model(name: str) -> str:
    """Ollama's canonical spelling: lower case, tag `latest` when none is given, and no
    default registry (`registry.ollama.ai/`) or namespace (`library/`), as `/api/ps`
    names them. A port in a registry host (`host:5000/ns/m`) is not a tag."""
    parts = name.strip().lower().split("/")
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    name = "/".join(parts)
    last = parts[-1]
    if ":" not in last:
        name += ":latest"
    return name


def load_options(options: Any) -> dict[str, Any]:
    """The runner options of a request's `options` object (others are per request)."""
    if not isinstance(options, Mapping):
        return {}
    return {k: options[k] for k in LOAD_OPTIONS if k in options and options[k] is not None}


def residency_key(model: str, options: Any = None) -> str:
    """`llama3:latest` alone, or `llama3:latest {"num_ctx":8192}` with runner options."""
    name = normalise_model(model)
    opts = load_options(options)
    if not opts:
        return name
    return name + " " + json.dumps(opts, sort_keys=True, separators=(",", ":"))


def split_key(key: str) -> tuple[str, dict[str, Any]]:
    """The model name and runner options a residency key was made from."""
    name, _, opts = key.partition(" ")
    return name, (json.loads(opts) if opts else {})
