"""`python -m foreman.stub`: run a stub Ollama (see cli.py for the flags)."""

from .cli import main

raise SystemExit(main())
