"""``python -m plugin`` is ``fanoni-scheduling``."""

import sys

from plugin.cli import main

sys.exit(main())
