"""foreman: a durable, drain-by-model job queue in front of Ollama."""

__version__ = "0.1.0"
