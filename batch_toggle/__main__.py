"""`python -m batch_toggle` runs the same CLI as the `batch-toggle` console script."""

from batch_toggle.cli import main

if __name__ == "__main__":
    main()
