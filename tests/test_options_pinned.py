"""The option list is written in several places: the Tracker signature, the Config fields,
the variables Config reads and README's configuration table (and API.md's tables, when the
contract is at hand). These tests tie them to one list, so that an option added to one place
and forgotten in another fails here instead of reaching users."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest

import tracker
from tracker import Config, Tracker
from tracker._config import _ENV

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API = Path("/work/shared/API.md")  # the public contract, where this checkout has it

# Config keeps one field that is bookkeeping, not an option: which options were given.
NOT_AN_OPTION = {"given"}

_TABLE_HEADER = re.compile(r"^\|\s*option\s*\|\s*env\s*\|")


def option_tables(text: str) -> dict[str, str | None]:
    """Every ``| option | env | ... |`` table in ``text``: option -> its variable (None when
    the table names none). A cell may name several options (`backoff_base`, `backoff_max`)."""
    found: dict[str, str | None] = {}
    in_table = False
    for line in text.splitlines():
        if _TABLE_HEADER.match(line):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set(cells[0]) <= set("-: "):
            continue  # the |---| row
        names = re.findall(r"[a-z_]+", cells[0].replace("`", ""))
        variables = re.findall(r"PX_[A-Z_]+", cells[1])
        assert len(variables) <= 1, f"one variable per row: {line}"
        for name in names:
            assert name not in found, f"{name!r} is in the tables twice"
            found[name] = variables[0] if variables else None
    return found


def readme_configuration_table() -> dict[str, str | None]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = option_tables(section)
    assert table, "README's Configuration section has no option table"
    return table


def tracker_options() -> list[str]:
    parameters = inspect.signature(Tracker.__init__).parameters
    return [name for name in parameters if name != "self"]


def config_options() -> list[str]:
    return [field.name for field in attrs.fields(Config) if field.name not in NOT_AN_OPTION]


def env_variables() -> dict[str, str]:
    return {name: var for name, (var, _) in _ENV.items()}


class TestOneOptionList:
    def test_tracker_keywords_are_the_config_fields_in_the_same_order(self) -> None:
        assert tracker_options() == config_options()

    def test_every_tracker_option_but_api_key_is_keyword_only(self) -> None:
        parameters = list(inspect.signature(Tracker.__init__).parameters.values())[1:]
        assert parameters[0].name == "api_key"
        assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert [p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY] == [
            "api_key"
        ]

    def test_configure_takes_the_tracker_options(self) -> None:
        configure = inspect.signature(tracker.configure).parameters
        assert list(configure) == tracker_options()

    def test_every_variable_config_reads_sets_an_option(self) -> None:
        assert set(env_variables()) <= set(config_options())
        variables = list(env_variables().values())
        assert len(variables) == len(set(variables)), "two options read the same variable"
        assert all(var.startswith("PX_") for var in variables)

    def test_readme_table_names_every_option_and_nothing_else(self) -> None:
        assert sorted(readme_configuration_table()) == sorted(config_options())

    def test_readme_table_names_exactly_the_variables_config_reads(self) -> None:
        documented = {
            name: var for name, var in readme_configuration_table().items() if var is not None
        }
        assert documented == env_variables()

    @pytest.mark.skipif(not API.exists(), reason=f"the contract {API} is not in this checkout")
    def test_api_contract_names_only_options_with_the_same_variables(self) -> None:
        # API.md lists a subset (some options, ca_bundle and its PX_CA_BUNDLE among them,
        # are extensions), so only this direction holds: what it names exists, with the
        # variable it says (or none where Config reads none).
        contract = option_tables(API.read_text(encoding="utf-8"))
        assert contract
        assert set(contract) <= set(config_options())
        variables = env_variables()
        assert contract == {name: variables.get(name) for name in contract}
