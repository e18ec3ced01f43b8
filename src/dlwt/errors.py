"""The one error type library code raises. Its message is one line naming the thing and the fix; only the
CLI (`dlwt.cli.main`) turns it into that line on stderr and exit code 2.

    from dlwt.errors import DlwtError
    raise DlwtError(f"{path}: not a dlwt checkpoint; pass the final.pt of a `dlwt train` run")
"""


class DlwtError(Exception):
    """Bad input or a state the user must fix; str(e) is the one line the CLI prints."""
