"""The command line's answer to a user error: one line, `error: ...`, exit 2; never a traceback.

`CliGroup` is the `outguard` app's click group (`typer.Typer(cls=CliGroup)`). It runs the
command and turns what a person can fix (a typo in a path, an option value it does not
take, a bad URL, a missing model folder, a database it cannot reach or whose schema is
behind, a setting that does not parse) into one line that says what to do. Anything
else is a bug and keeps its traceback.

Known errors are matched by class name along their MRO, so this module imports none of
the heavy libraries (SQLAlchemy, MLflow, LightGBM) a command may never load.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer._click.utils import echo
from typer.core import TyperGroup
from typer.exceptions import Abort

EXIT_USER_ERROR = 2


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _database(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error.__cause__ or error
    return f"the database did not answer ({_first_line(cause)}): check OUTGUARD_DATABASE_URL and that the server runs"


def _validation(error: BaseException) -> str:
    problems = [
        f"{'.'.join(str(part) for part in e.get('loc', ())) or 'value'}: {e.get('msg', '')}"
        for e in error.errors()  # type: ignore[attr-defined]
    ]
    return "invalid setting: " + "; ".join(problems) + " (see docs/configuration.md)"


def _os_error(error: OSError) -> str:
    what = error.strerror or _first_line(error) or type(error).__name__
    where = f": {error.filename}" if error.filename else ""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such file or folder: {error.filename}"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused{where}: is the server running and is the address right?"
    return f"{what}{where}"


# Qualified class name -> how to say it. The first class found along an exception's MRO decides.
KNOWN: dict[str, Callable[[Any], str]] = {
    "service.stores.schema.SchemaOutOfDate": str,
    "sqlalchemy.exc.OperationalError": _database,
    "sqlalchemy.exc.InterfaceError": _database,
    "sqlalchemy.exc.ArgumentError": lambda e: f"OUTGUARD_DATABASE_URL is not a database URL: {_first_line(e)}",
    "sqlalchemy.exc.NoSuchModuleError": lambda e: f"OUTGUARD_DATABASE_URL names an unknown database: {_first_line(e)}",
    "pydantic_core._pydantic_core.ValidationError": _validation,
    "pydantic_settings.exceptions.SettingsError": lambda e: f"invalid setting: {_first_line(e)}",
    "httpx.InvalidURL": lambda e: f"not a URL: {_first_line(e)}",
    "httpx.UnsupportedProtocol": lambda e: f"not an http(s) URL: {_first_line(e)}",
    "httpx.HTTPError": lambda e: f"the server did not answer: {_first_line(e) or type(e).__name__}",
    "redis.exceptions.ConnectionError": lambda e: f"Redis did not answer ({_first_line(e)}): check OUTGUARD_REDIS_URL",
    "smtplib.SMTPException": lambda e: f"the mail server refused: {type(e).__name__} {_first_line(e)}".rstrip(),
    "models.bundle.BundleError": str,
    "models.registry.RegistryError": str,
    "service.fingerprints.importer.NotMail": str,
    "training.train_events.NotEnoughLabels": str,
    "training.corpora.CorpusMissing": lambda e: _first_line(e),
    "json.decoder.JSONDecodeError": lambda e: f"not valid JSON ({e.msg} at line {e.lineno})",
    "builtins.OSError": _os_error,  # a path that is not there, a refused connection, a full disk
}


def describe(error: BaseException) -> str | None:
    """One line for a user error, or None for anything else (a bug)."""
    for cls in type(error).__mro__:
        say = KNOWN.get(f"{cls.__module__}.{cls.__qualname__}")
        if say is not None:
            return " ".join(say(error).split())
    return None


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    echo(f"error: {message}", err=True)
    sys.exit(code)


class CliGroup(TyperGroup):
    """The app's group: runs the command, and answers a user error in one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as error:  # `outguard` alone: the help is printed already
            sys.exit(error.exit_code)
        except UsageError as error:  # an unknown option, a value it does not take, a missing argument
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            fail(" ".join(error.format_message().split()) + hint, error.exit_code)
        except ClickException as error:
            fail(" ".join(error.format_message().split()), error.exit_code)
        except Abort:
            fail("aborted", 1)
        except Exception as error:
            message = describe(error)
            if message is None:
                raise
            fail(message)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)
