"""Moved to benchmarks/step.py: `python -m benchmarks.step`. This entry point stays for one release."""
from benchmarks.step import main
if __name__ == "__main__":
    main()
