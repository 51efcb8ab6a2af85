"""`python -m seqmodels` is the `seqmodels` command.

Recipe stages run this way. It imports `seqmodels.cli` as a module rather than running
it as `__main__`, so there is one `CLIError` class and domains' errors are caught.
"""

import sys

from seqmodels.cli import main

sys.exit(main())
