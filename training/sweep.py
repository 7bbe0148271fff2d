"""Moved to benchmarks/sweep.py: `python -m benchmarks.sweep`. This entry point stays for one release."""
from benchmarks.sweep import main
if __name__ == "__main__":
    raise SystemExit(main())
