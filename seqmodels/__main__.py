"""`python -m seqmodels` is the `seqmodels` command; recipe stages run this way."""

import sys

from seqmodels.cli import main

sys.exit(main())
