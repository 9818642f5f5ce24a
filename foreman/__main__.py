"""`python -m foreman` behaves exactly like the `foreman` command."""

import sys

from foreman.cli import main

sys.exit(main())
