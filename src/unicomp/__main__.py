"""``python -m unicomp``: the command line (unicomp.cli)."""

import sys

from unicomp.cli import main

sys.exit(main())
