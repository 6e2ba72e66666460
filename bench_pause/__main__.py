"""`python -m bench_pause` is the `bench-pause` command."""

import sys

from bench_pause.cli import main

if __name__ == "__main__":
    sys.exit(main())
