"""`python -m batch_toggle` runs the same CLI as the `batch-toggle` console script, through the
same entry (batch_toggle.cli.entry: an interrupt during start-up exits 130 with one line)."""

from batch_toggle.cli.entry import main

if __name__ == "__main__":
    main()
