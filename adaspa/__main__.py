"""Command line of adaspa: `python -m adaspa <command> [options]`.

Commands:
    demo    generate a clip with the shipped tiny video DiT, densely and with AdaSpa,
            and compare them (or, with --workload synthetic, run a full schedule on
            synthetic attention and show phases, density, recall, error and time per step).

Example:
    python -m adaspa demo --help
"""

from __future__ import annotations

import argparse
import sys


def _demo(argv):
    from .demo import main

    return main(argv)


COMMANDS = {"demo": (_demo, "generate a clip densely and with AdaSpa, or run the schedule on synthetic attention")}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m adaspa",
        description="AdaSpa: training-free adaptive sparse attention for video diffusion transformers.",
        epilog="Run `python -m adaspa <command> --help` for a command's options.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{name}: {text}" for name, (_, text) in sorted(COMMANDS.items())))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options of the command")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    parsed = parser.parse_args(argv[:1])
    return COMMANDS[parsed.command][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
