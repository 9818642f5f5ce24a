"""The dashboard page: plain HTML, CSS and one script, served by foreman.api.dashboard."""
