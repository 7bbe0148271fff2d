"""Moved to benchmarks/data_bench.py: `python -m benchmarks.data_bench`. This entry point stays for one release."""
import sys

from benchmarks.data_bench import main

if __name__ == "__main__":
    sys.exit(main())
