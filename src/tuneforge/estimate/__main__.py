"""`python -m tuneforge.estimate CONFIG.yaml ...`: the same as `tuneforge estimate`."""

import sys

from ..errors import TuneforgeError
from .command import run_estimate

if __name__ == "__main__":
    try:
        sys.exit(run_estimate(sys.argv[1:]))
    except TuneforgeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
