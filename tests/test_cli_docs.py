"""Every rv command is documented: in its --help, and in docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from repovault_cli.main import cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
COMMANDS = sorted(cli.commands)


class TestDocumentation:
    @pytest.mark.parametrize("name", COMMANDS)
    def test_each_command_has_help_text(self, name: str) -> None:
        """`rv NAME --help` exits 0 and shows a one-line summary."""
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        command = cli.commands[name]
        assert command.help, f"{name} has no docstring"

    @pytest.mark.parametrize("name", COMMANDS)
    def test_each_command_is_in_the_reference(self, name: str) -> None:
        """docs/cli.md has a section for every command and mentions each of its options."""
        text = DOCS.read_text()
        assert f"## rv {name}" in text, f"docs/cli.md lacks '## rv {name}'"
        section = text.split(f"## rv {name}", 1)[1].split("\n## ", 1)[0]
        for parameter in cli.commands[name].params:
            if isinstance(parameter, click.Option) and parameter.name != "help":
                assert parameter.opts[0] in section, f"{parameter.opts[0]} of rv {name}"

    def test_the_reference_lists_no_command_that_does_not_exist(self) -> None:
        """No stale sections."""
        documented = {
            line[len("## rv ") :].strip()
            for line in DOCS.read_text().splitlines()
            if line.startswith("## rv ")
        }
        assert documented == set(COMMANDS)
