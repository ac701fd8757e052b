"""The ``sharpkit`` command line: a thin typer layer over the public API.

Results go to stdout (a rich table, or JSON with ``--json``); progress, warnings
and errors go to stderr. A :class:`~sharpkit.SharpkitError` becomes one line,
``error: <message>``, and exit status 1; ``--debug`` (or ``SHARPKIT_DEBUG=1``)
shows the traceback instead. Ctrl-C (SIGINT), SIGTERM and SIGHUP end a command
the same way: the stack unwinds (temporary files removed, a sweep's workers
stopped), one line says so, and the exit status is ``128 + signal`` (130, 143,
129).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sharpkit.cli._progress import print_line
from sharpkit.errors import SharpkitError, SharpkitWarning, kept_note

__all__ = ["app", "main"]

_STATE: dict[str, Any] = {"debug": False, "argv": None}


def _usage_error_class() -> type[Exception]:
    """The usage-error class of the click that typer runs on.

    typer 0.2x vendors its own copy of click, whose exceptions are not those of
    an installed ``click``; ``typer.BadParameter`` (public) is one of them, and
    its base class ``UsageError`` is the one every usage error derives from.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "UsageError" and issubclass(cls, Exception):
            return cls
    return typer.BadParameter  # pragma: no cover - click has always had it


UsageError = _usage_error_class()


def _debug_enabled() -> bool:
    return bool(_STATE["debug"]) or os.environ.get("SHARPKIT_DEBUG", "") not in (
        "",
        "0",
    )


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = str(message)
    if not issubclass(category, SharpkitWarning):
        text = f"{category.__name__}: {text}"
    print_line("warning", text)


def _usage_error(exc: Exception) -> typer.Exit:
    """One line for a usage error (exit status 2), instead of click's box.

    ``no_args_is_help`` (a command run bare) still shows the help.
    """
    if type(exc).__name__ == "NoArgsIsHelpError" or _debug_enabled():
        raise exc
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "sharpkit"
    message = str(exc.format_message()).rstrip(".")  # type: ignore[attr-defined]
    print_line("error", f"{message}; see '{where} --help'")
    return typer.Exit(2)


class _ErrorBoundary(TyperGroup):
    """Turn SharpkitError into one line on stderr and exit status 1.

    A usage error (an unknown option, a value of the wrong type) is one line
    too, with exit status 2; a signal ends the command as described above.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        """Parse the top-level options; a usage error in them is one line."""
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(
        self, ctx: Any
    ) -> Any:  # typer vendors click; its Context type is private
        from sharpkit._fs import Terminated, remove_live_temps, unwind_on_signals
        from sharpkit._hints import cli_hints

        old_show = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            with unwind_on_signals(), cli_hints():  # hints name flags, not arguments
                return super().invoke(ctx)
        except UsageError as exc:
            raise _usage_error(exc) from None
        except SharpkitError as exc:
            if _debug_enabled():
                raise
            from sharpkit.cli import _distributed

            if _distributed.records_errors():  # a rank of --nproc: it reports
                _distributed.record_error(exc)
                _distributed.exit_rank(1)  # no teardown noise on the terminal
            # Text, not markup: "sharpkit[hf]" and "pkg:name:" print as they are.
            print_line("error", _distributed.rank_prefix() + str(exc))
            raise typer.Exit(1) from None
        except OSError as exc:  # the system refused: a name too long, a full disk
            if _debug_enabled():
                raise
            print_line("error", _os_error(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            remove_live_temps()
            print_line("error", _interrupted("Ctrl-C (SIGINT)", kept_note(exc)))
            raise typer.Exit(130) from None
        except Terminated as exc:
            remove_live_temps()
            print_line("error", _interrupted(exc.name, kept_note(exc)))
            raise typer.Exit(exc.status) from None
        finally:
            warnings.showwarning = old_show


def _os_error(exc: OSError) -> str:
    """One line for an error the operating system raised on a file."""
    what = exc.strerror or type(exc).__name__
    where = f" {str(exc.filename)[:200]!r}" if exc.filename is not None else ""
    return (
        f"the system refused{where}: {what}; check the path (its length, that it "
        "exists, its permissions, the free space) and try again"
    )


def _interrupted(what: str, kept: str | None = None) -> str:
    if kept is not None:  # it says what was complete and kept
        return (
            f"interrupted by {what}: {kept}; run the same command again to "
            "measure the rest"
        )
    return (
        f"interrupted by {what}: what was complete is kept and nothing half-written "
        "is left; run the same command again to continue (train: add --resume)"
    )


app = typer.Typer(
    name="sharpkit",
    cls=_ErrorBoundary,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Measure how sharp or flat the minimum of a trained PyTorch model is.",
)


def _version_callback(value: bool) -> None:
    if value:
        import sharpkit

        typer.echo(f"sharpkit {sharpkit.__version__}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show tracebacks instead of one-line errors."),
    ] = False,
    disable_plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--disable-plugin",
            metavar="NAME",
            help="Do not load this plugin (entry-point name); repeatable. "
            "Also $SHARPKIT_DISABLE_PLUGINS=a,b.",
        ),
    ] = None,
    disable: Annotated[
        list[str] | None,
        typer.Option(
            "--disable",
            metavar="KIND:NAME[@PLUGIN]",
            help="Leave out one component, from every plugin or from one "
            "(e.g. metric:spectral@builtin when two plugins provide spectral); "
            "repeatable. Also $SHARPKIT_DISABLE.",
        ),
    ] = None,
) -> None:
    """Measure how sharp or flat the minimum of a trained PyTorch model is."""
    _STATE["debug"] = debug
    from sharpkit import registry

    if disable_plugin or disable:
        registry.reset_registry(
            disabled=disable_plugin or (), disabled_components=disable or ()
        )
    elif registry._REGISTRY is not None and ctx.invoked_subcommand != "plugins":
        # Built quietly while plugin commands were collected: say now what failed
        # (`sharpkit plugins` lists the failures itself).
        registry._REGISTRY.report_failures()


def _add_builtin_commands() -> None:
    from sharpkit.cli import (
        correlate,
        interpolate,
        measure,
        plot,
        plugins,
        probe,
        reproduce,
        results,
        sweep,
        train,
    )

    app.command("measure", no_args_is_help=True)(measure.measure)
    app.command("train")(train.train)
    app.command("interpolate", no_args_is_help=True)(interpolate.interpolate)
    app.command("probe", no_args_is_help=True)(probe.probe)
    app.command("results")(results.results)
    app.command("correlate")(correlate.correlate)
    app.command("plot", no_args_is_help=True)(plot.plot)
    app.command("sweep", no_args_is_help=True)(sweep.sweep)
    app.command("reproduce", no_args_is_help=True)(reproduce.reproduce)
    app.command("plugins")(plugins.plugins)


BUILTIN_COMMANDS = (
    "measure",
    "train",
    "interpolate",
    "probe",
    "results",
    "correlate",
    "plot",
    "sweep",
    "reproduce",
    "plugins",
)
_add_builtin_commands()
_PLUGIN_COMMANDS_ADDED = False


def add_plugin_commands() -> None:
    """Let plugins add their commands (once); failures are reported and skipped."""
    global _PLUGIN_COMMANDS_ADDED  # noqa: PLW0603 - once per process
    if _PLUGIN_COMMANDS_ADDED:
        return
    _PLUGIN_COMMANDS_ADDED = True
    from sharpkit.registry import reset_registry

    disabled = _argv_values(sys.argv[1:], "--disable-plugin")
    components = _argv_values(sys.argv[1:], "--disable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SharpkitWarning)
            reg = (
                reset_registry(
                    disabled=disabled, disabled_components=components, warn=False
                )
                if disabled or components
                else reset_registry(warn=False)
            )
            reg.register_commands(app, reserved=BUILTIN_COMMANDS)
    except SharpkitError:
        # A broken installation is reported by the command that needs it.
        return


def _argv_values(argv: list[str], flag: str) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            out.append(arg.split("=", 1)[1])
    return out


# Top-level options that take a value (the next word is not the command).
_VALUED = ("--disable-plugin", "--disable")


def needs_plugin_commands(argv: list[str]) -> bool:
    """Whether ``argv`` may run a command a plugin adds.

    Not for ``--version``, ``--help`` or a bare ``sharpkit`` (they must answer
    even when a plugin's import hangs or fails), nor for a built-in command
    (it needs plugins only for what it runs, and loads them then).
    """
    words = iter(argv)
    for word in words:
        if word in ("--version", "--help", "-h"):
            return False
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word not in BUILTIN_COMMANDS
    return False


def _tolerant_streams() -> None:
    """On an ASCII terminal (``PYTHONIOENCODING=ascii``) η, λ and ± print as ``?``.

    Instead of a ``UnicodeEncodeError`` traceback after the work is done.
    """
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def main() -> None:
    """Run the ``sharpkit`` command line."""
    _STATE["argv"] = list(sys.argv[1:])  # what --nproc starts again in each rank
    from sharpkit.cli._distributed import end_with_launcher

    end_with_launcher()  # a rank of --nproc: it ends with its launcher
    _tolerant_streams()
    if needs_plugin_commands(sys.argv[1:]):
        add_plugin_commands()
    app()
