"""What every CLI command shares: one-line errors and the rich console."""

from __future__ import annotations

import functools

import typer
from rich.console import Console
from rich.markup import escape

from maeast.errors import MaeastError
from maeast.train.preempt import Preempted

console = Console()
err_console = Console(stderr=True)


def friendly(fn):
    """Wrap a command so that a MaeastError (or a missing file) is one line on stderr, exit 2; a run that a stop
    signal ended after its checkpoint (Preempted) is one line too, exit 75 (maeast.train.preempt: restart me)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Preempted as e:
            err_console.print(escape(str(e)), highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except MaeastError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except OSError as e:  # disk full, permissions, a file vanishing mid-run
            err_console.print(f"[bold red]error:[/] {e.strerror or e}: {e.filename or ''}", highlight=False)
            raise typer.Exit(2)
        except RuntimeError as e:  # a collective failed outside a Run's session (which names the step itself)
            from maeast.train.distributed import is_peer_failure
            if not is_peer_failure(e):
                raise
            err_console.print(f"[bold red]error:[/] a collective failed outside the training steps "
                              f"({type(e).__name__}): another process died or stalled past run.collective_timeout; "
                              f"see its output, then rerun (with --resume if the run has a checkpoint)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: work already finished is kept")
            raise typer.Exit(130)

    return wrapper


def new_app(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode="rich")
