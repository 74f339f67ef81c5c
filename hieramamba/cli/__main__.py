"""``python -m hieramamba.cli`` = the ``hieramamba`` command."""

import sys

from . import main

sys.exit(main())
