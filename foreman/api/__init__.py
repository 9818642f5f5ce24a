"""The HTTP face of foreman: a Quart-Trio app that only translates HTTP to calls and back."""

from foreman.api.app import create_app
from foreman.api.services import Services

__all__ = ["Services", "create_app"]
