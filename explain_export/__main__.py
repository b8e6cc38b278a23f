"""``python -m explain_export`` is ``explain-export``."""

import sys

from .cli.export import main

sys.exit(main())
