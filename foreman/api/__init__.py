"""The HTTP face of foreman: a Quart-Trio app that only translates HTTP to calls and back."""

from foreman.api.app import Services, create_app

__all__ = ["Services", "create_app"]
