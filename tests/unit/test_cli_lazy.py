"""The command line builds only what a command line needs: `patchguard --help` lists the other
modules' command groups by the names and help texts cli.GROUPS keeps, which must be the ones
their register functions add; a group's own command line gets that group in full."""

from __future__ import annotations

import argparse

import pytest

from patchguard import cli


def listed(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Each subcommand's help line, in the order `--help` shows them."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a.help for a in sub._choices_actions}


def test_the_listed_help_texts_are_the_registered_ones() -> None:
    full = listed(cli._parser(None, everything=True))
    lazy = listed(cli._parser(None, everything=False))
    assert lazy == full  # names, order and help lines alike
    assert set(cli.GROUPS) <= set(full)


@pytest.mark.parametrize("command", sorted(cli.GROUPS))
def test_a_groups_command_line_gets_the_group_in_full(command: str) -> None:
    parser = cli._parser(command, everything=False)
    assert listed(parser) == listed(cli._parser(None, everything=True))
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0


def test_a_core_command_line_registers_no_group() -> None:
    assert not set(cli.GROUPS) & set(listed(cli._parser("scan", everything=False)))
