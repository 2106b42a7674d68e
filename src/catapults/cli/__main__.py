"""``python -m catapults.cli``: the same as the ``catapults`` command."""

import sys

from catapults.cli import main

sys.exit(main())
