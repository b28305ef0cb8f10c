"""``python -m orchestrator.cli``: the ``caviar`` command (Ray Jobs run it this way)."""

import sys

from orchestrator.cli import main

sys.exit(main())
