"""Help texts written as docstrings, shown as paragraphs that wrap to the terminal.

A docstring is wrapped at the source's line length; typer shows its line breaks as they
are, so on a narrower or wider terminal sentences break in the middle.
:func:`reflow_help` joins the lines of each paragraph of every command's and group's
help, so that the terminal alone decides where lines break. Paragraphs (blank-line
separated) and list items (lines starting with ``-`` or ``*``) stay as written.
"""

from __future__ import annotations

import inspect

import typer

__all__ = ["reflow", "reflow_help"]


def reflow(text: str | None) -> str | None:
    """``text`` with each paragraph's lines joined by spaces (list items kept apart)."""
    if text is None:
        return None
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            stripped = line.strip()
            if lines and not stripped.startswith(("- ", "* ")):
                lines[-1] = f"{lines[-1]} {stripped}"
            else:
                lines.append(stripped)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def reflow_help(app: typer.Typer) -> None:
    """Reflow the help of ``app``, of each of its commands and of its sub-apps, in place."""
    app.info.help = reflow(app.info.help)
    for command in app.registered_commands:
        docstring = inspect.getdoc(command.callback) if command.callback else None
        command.help = reflow(command.help or docstring)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
