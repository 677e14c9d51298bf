"""Serving: terminal chat (`mm1 chat`), an OpenAI-compatible HTTP API and a web page (`mm1 serve`)."""

from __future__ import annotations

import mm1


def load_model(path) -> mm1.MM1Model:
    """The model of a saved directory, or a one-line exit message instead of a traceback."""
    try:
        return mm1.load(path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"mm1: {err}") from None
