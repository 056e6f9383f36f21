"""The package version, in a module of its own: the engine (the User-Agent header, the run
record) and the CLI read it without importing the package's public API, which imports them."""

__version__ = "0.1.0"
