"""The command line: click commands over the library (see app.py for the group)."""
