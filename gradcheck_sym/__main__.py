"""`python -m gradcheck_sym` runs the command line."""

import sys

from .cli import main

sys.exit(main())
