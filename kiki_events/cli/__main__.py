"""``python -m kiki_events.cli``."""

import sys

from .main import main

sys.exit(main())
