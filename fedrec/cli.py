"""The ``fedrec`` command: one dispatcher, each subcommand living with its layer.

Subcommands are imported lazily, so ``fedrec --help`` is fast and Flower is only
loaded when a Flower subcommand runs. Nothing imports this module. Every
:class:`~fedrec.errors.FedRecError` a subcommand raises becomes one line on
stderr and exit code 2, never a traceback: the error's message names the file,
line or key and the rule broken.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Each module has ``main(argv) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train-central": ("fedrec.train.cli", "train the centralized, non-private baseline"),
    "simulate": ("fedrec.simulations.cli", "run a federated simulation on Flower"),
    "sweep": ("fedrec.simulations.sweep", "privacy/utility sweep: table and plot"),
    "server": ("fedrec.server.cli", "deploy: TLS, device keys, SuperLink, runs, resume, signed export"),
    "device": ("fedrec.client.cli", "deploy: join a SuperLink as one device (a Flower SuperNode)"),
}


def _usage() -> str:
    lines = ["usage: fedrec <command> [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'fedrec <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from fedrec import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fedrec: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from fedrec.errors import FedRecError

    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest))
    except FedRecError as exc:
        print(error_line(name, exc), file=sys.stderr)
        return 2


def error_line(command: str, exc: BaseException) -> str:
    """One line for stderr: the command, then the error's own message (which names the file or key)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"fedrec {command}: error: {message}"


if __name__ == "__main__":
    raise SystemExit(main())
