"""``python -m modeopt_masks demo``: the same as the ``modeopt-masks`` command."""

import sys

from .cli import main

sys.exit(main())
