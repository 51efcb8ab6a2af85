"""The `seqmodels` command (entry point `seqmodels.cli:main`).

dispatch: `main`; lightning: fit / validate / test / predict (LightningCLI); sample:
generate; evaluate; export. The parser, `find_command`, domain plugins and the helpers
domains use (`add_flag`, the thread setting, `CLIError`) live in seqmodels.commands.
"""

from seqmodels.cli.dispatch import main
from seqmodels.commands import CLIError  # domains raise it as `seqmodels.cli.CLIError`

__all__ = ["CLIError", "main"]
