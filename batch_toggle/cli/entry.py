"""The process entry of the `batch-toggle` console script and of `python -m batch_toggle`.

Why it exists: the CLI turns Ctrl-C into one line and exit 130 (`cli.guarded`), and a run turns
SIGINT/SIGTERM into a clean stop (`runner.signals`), but only once a command body runs. Before
that a process spends about 0.3 s importing click, pyarrow and the jobs layer, then click parses
the options and the command imports what it needs (httpx for `run`). An interrupt in that
stretch used to end badly: a KeyboardInterrupt escaping the imports printed a traceback and made
CPython kill itself with SIGINT (exit -2 to a parent); one during click's part gave "Aborted!"
and exit 1; a SIGTERM anywhere before the run's own handler killed the process outright (-15).

main() covers that stretch:

  * SIGTERM is made to act as SIGINT (raise KeyboardInterrupt) before anything heavy is
    imported, unless the parent chose to ignore it. (`batch-toggle sandbox` therefore also
    stops quietly on SIGTERM.) A run replaces both handlers from the start of its sending part
    until its report is written (send/signals.Interrupts, held by the job's session): a signal
    then stops the run instead, and it ends with a complete report, its summary and exit 130;
    after that the handlers installed here come back.
  * The import of the CLI and click's parsing run inside one `except KeyboardInterrupt`, and
    click runs with standalone_mode=False so that an interrupt it catches (it turns one into
    `Abort`) reaches us instead of becoming "Aborted!" and exit 1. Everything else click's
    standalone mode does is repeated here: usage errors shown with their exit code, an Abort
    of its own as "Aborted!" and exit 1, --help/--version exiting 0.
  * An interrupt there exits 130 with the one line `batch-toggle: interrupted`, as
    cli.guarded does once a command runs. (One caught by click inside a command, before its
    body, follows the blank line click writes to close the terminal's ^C.)

What remains uncovered, and cannot be covered from here:

  * Everything before this function runs: the interpreter's own start-up (site, encodings,
    .pth files) and the import of the package `batch_toggle` (its __init__: logging,
    dataclasses, typing, .errors; about 20 ms, kept light for this reason). A SIGINT there
    ends the process as Python does: killed by SIGINT (-2 to a parent, 130 in a shell), with
    a traceback once Python's own handler is in place, or a traceback and exit 1 while `site`
    imports. A SIGTERM kills it (-15). Nothing has been read or sent by then: the state store
    is untouched.
  * Everything after: once a run's report is written and the run recorded as finished, the
    handlers installed here are back, so a signal in the moment before the process exits
    gives the one line and exit 130 although the report (which tells the run's own exit code)
    and the store are complete; once the interpreter shuts down, CPython puts the default
    actions back, and a late signal ends the process by that signal.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from batch_toggle.errors import ExitCode  # loaded already: the package's __init__ imports it
from batch_toggle.stderr import say  # stdlib only (sys, os, io): no click, nothing slow


def main() -> NoReturn:
    """Run the click CLI; exit with its code, or 130 and one line if interrupted on the way."""
    try:
        try:
            _sigterm_as_interrupt()
            _without_pandas()
            from batch_toggle.cli.app import main as cli  # the slow part: click, pyarrow, jobs

            sys.exit(_invoke(cli))
        except KeyboardInterrupt:
            _interrupted()
    finally:
        _forget_handled_interrupt()


def _sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, like SIGINT, except while a run catches both itself.

    Left alone when the parent made the process ignore SIGTERM (SIG_IGN is inherited)."""
    import signal  # here, inside main's try: even this import takes a moment (its enums)

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)


class _NoPandas:
    """Refuses `import pandas` (see `_without_pandas`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("the batch-toggle command line does not use pandas")


def _without_pandas() -> None:
    """The command line reads files, never DataFrames, so it has no use for pandas. Yet when
    pandas is installed (the `batch-toggle[pandas]` extra, for notebooks), pyarrow imports it
    on its first conversion of Python values, only to check whether they are pandas objects:
    0.3 s and 50 MB on every start, a third of a `run`'s start-up. Refusing the import makes
    pyarrow take pandas for absent. The library (`import batch_toggle`) is not affected."""
    import sys

    sys.meta_path.insert(0, _NoPandas())


def _invoke(cli: Any) -> int:
    """click's main without its standalone handling of interrupts; the rest of it as click does."""
    import click

    try:
        rv = cli.main(standalone_mode=False)
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        click.echo("Aborted!", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    # Not standalone, click returns what the command returned, or the code of an Exit raised
    # by --help/--version/ctx.exit(). Our commands never return (they sys.exit), so an int
    # here is an Exit's code; anything else is a normal end.
    return rv if type(rv) is int else 0


def _forget_handled_interrupt() -> None:
    """Keep `python -m batch_toggle` from turning a handled interrupt into death by SIGINT.

    CPython (3.8 to 3.13 at least) remembers when a KeyboardInterrupt leaves an exec() of a
    string, and @dataclass and namedtuple build their methods that way, so an interrupt while
    a module is being imported often does. Under `python -m` (not a console script) the
    interpreter then kills itself with SIGINT on the way out (exit -2) however the interrupt
    was handled and whatever sys.exit() said. We are leaving by SystemExit, nothing is
    unhandled: any exec() of a string that succeeds clears that memory."""
    exec("None")


def _interrupted() -> NoReturn:
    """One line, exit 130. A further SIGINT/SIGTERM from here on ends the process at once (the
    default action), never with a traceback from the interpreter's shutdown."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is signal.default_int_handler:
            signal.signal(sig, signal.SIG_DFL)
    say("batch-toggle: interrupted")  # never raises: with stderr gone the exit code still says it
    sys.exit(int(ExitCode.INTERRUPTED))
