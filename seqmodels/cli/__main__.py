"""`python -m seqmodels.cli`: the same as `python -m seqmodels`."""

import sys

from seqmodels.cli import main

sys.exit(main())
