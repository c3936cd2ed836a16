"""Errors a user reads in one line: a bad value, a typo, missing data, a wrong checkpoint.

The ``hardcl`` and ``hardcl-eval`` commands print such an error as ``hardcl fit: error: ...``
naming the value, what is accepted and, for a typo, the closest valid name, and exit non-zero.
Without this, a bad value came after a 30-104 line traceback or a 45-line usage block with a
Namespace dump. Tracebacks stay for what is not a user's error (our bugs), and for everything
with ``HARDCL_DEBUG=1``.

- ``HardCLArgumentParser``: jsonargparse's parser with the condensed message (``condense``) in
  place of usage + nested union errors, and without argparse's prefix matching (``--trainer.max_epoch``
  was silently taken as ``max_epochs``).
- ``run_command``: runs a command, turning user errors raised while it runs (``USER_ERRORS``,
  a full disk) into one line.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import sys
from typing import Any, Callable, NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities.exceptions import MisconfigurationException

DEBUG_ENV = "HARDCL_DEBUG"

#: what our code raises for a bad value, missing data or a wrong file (each with a message that
#: names the value and what is accepted); anything else is a bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError,
                                                ImportError, MisconfigurationException)

_NOISE = (
    re.compile(r"^Does not validate against any of the Union subtypes"),
    re.compile(r"^Subtypes: "),
    re.compile(r"^Errors:$"),
    re.compile(r"^Given value( type)?: "),
    re.compile(r"^Expected a <class 'NoneType'>"),
    re.compile(r"^Expected a path but .* either not accessible or invalid"),
    re.compile(r"^Problem with given class_path "),
    re.compile(r"^Not a valid subclass of "),
)


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _known_classes(key: str) -> list[str]:
    """The classes a ``model`` / ``data`` value may name by its short name: the concrete methods
    (or datamodules), not the bases and mixins they are made of."""
    import inspect

    import lightning as L

    import hardcl_lightning.data as data
    import hardcl_lightning.methods as methods

    module, base = (data, L.LightningDataModule) if key == "data" else (methods, L.LightningModule)
    bases = {"BaseMethod", "MomentumMethod", "SSLDataModule"}
    return sorted(name for name, obj in vars(module).items() if inspect.isclass(obj) and issubclass(obj, base)
                  and name not in bases and not name.endswith("Mixin"))


def condense(message: str, option_strings: list[str] | None = None) -> str:
    """jsonargparse's nested message -> the key and the specific complaints, on one line or two."""
    lines = [line.strip().lstrip("- ").strip() for line in message.splitlines()]
    keys, kept = [], []
    for line in lines:
        key = re.fullmatch(r'Parser key "([^"]+)":', line)
        if key:
            keys.append(key.group(1))
        elif line and not any(p.search(line) for p in _NOISE) and line not in kept:
            kept.append(line)
    where = ".".join(dict.fromkeys(keys))
    unknown_class = next((re.search(r"Expected a dot import path string: (\S+)", k) for k in kept
                          if "dot import path" in k), None)
    if unknown_class and keys and keys[0] in ("model", "data"):
        name, top = unknown_class.group(1), keys[0]
        choices = _known_classes(top)
        close = difflib.get_close_matches(name, choices, n=2)
        return (f"{top}: unknown class {name!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
                + f" Accepted: {', '.join(choices)}, or a full import path (my_pkg.MyModule)")
    unrecognized = re.match(r"Unrecognized arguments: (.*)", " ".join(kept), flags=re.S | re.I)
    if unrecognized and option_strings:
        hints = []
        for arg in unrecognized.group(1).split():
            flag = arg.split("=", 1)[0]
            if flag.startswith("--"):
                close = difflib.get_close_matches(flag, option_strings, n=1, cutoff=0.75)
                hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        if hints:
            return f"unrecognized option(s): {', '.join(hints)}"
    text = "; ".join(kept) or message.strip()
    bad_key = re.search(r"(?:Option|does not accept option) '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        full = f"--{key}" if "." in key else f"--{where}.{key}" if where else f"--{key}"
        close = difflib.get_close_matches(full, option_strings or [], n=1, cutoff=0.75)
        if close:
            text += f" (did you mean {close[0][2:]}?)"
        elif where in ("model", "data"):  # a subclass's options are not parser options: its signature's are
            close = difflib.get_close_matches(key, _init_arguments(where), n=1, cutoff=0.75)
            text += f" (did you mean {close[0]}?)" if close else ""
        files = _config_files_with_key(key.rsplit(".", 1)[-1])
        if files:
            text += f"; it is set in {', '.join(files)}"
    return f"{where}: {text}" if where else text


def _init_arguments(key: str) -> list[str]:
    """Every ``__init__`` argument of the classes ``model`` / ``data`` may name (and their bases)."""
    import inspect

    import hardcl_lightning.data as data
    import hardcl_lightning.methods as methods

    names: set[str] = set()
    for name in _known_classes(key):
        for cls in getattr(data if key == "data" else methods, name).__mro__:
            if "__init__" in vars(cls):
                names.update(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs"))
    return sorted(names)


def _config_files_with_key(name: str) -> list[str]:
    """The ``--config`` files of this command line that set a key called ``name`` (at any depth)."""
    import yaml

    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return name in node or any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)

    argv, found = sys.argv[1:], []
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path and os.path.isfile(path):
            try:
                if has(yaml.safe_load(open(path).read())):
                    found.append(path)
            except (OSError, yaml.YAMLError):
                pass
    return found


class HardCLArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, erring in one condensed line and never completing a prefix."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        short = condense(message, list(parser._option_string_actions))
        sys.stderr.write(f"{prog}: error: {short}\n({prog} --help lists the options; {DEBUG_ENV}=1 shows the full message)\n")
        sys.exit(2)


def user_error_line(exc: BaseException) -> str | None:
    """The one line for a user's error, or None for an error that is not one (a bug)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing {exc.filename or 'a file'}: free space there, or write elsewhere (trainer.default_root_dir)"
    if isinstance(exc, USER_ERRORS):
        text = str(exc)
        if "Parser key" in text or "Does not validate against" in text:  # jsonargparse's, at instantiation
            text = condense(text)
        text = " ".join(text.split()) or type(exc).__name__
        return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"
    return None


def run_command(prog: str, command: Callable[[], Any]) -> None:
    """``command()``; a user's error it raises ends the process with one line on stderr and exit 1."""
    if debug():
        command()
        return
    try:
        command()
    except BaseException as exc:  # noqa: BLE001 - what is not a user's error is re-raised as it was
        line = user_error_line(exc)
        if line is None:
            raise
        sub = next((a for a in sys.argv[1:2] if not a.startswith("-")), "")
        sys.stderr.write(f"{prog}{' ' + sub if sub else ''}: error: {line}\n({DEBUG_ENV}=1 shows the traceback)\n")
        sys.exit(1)
