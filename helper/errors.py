"""The one exception type for bad user input, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (config, data, model choice). The message is one line naming the key, file or line."""


def run_cli(main: Callable[[], object]) -> None:
    """Run `main()`; a `UserError` becomes `error: <message>` on stderr and exit status 2, with no traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
