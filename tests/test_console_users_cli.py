"""``stocksync users``: accounts of the console, the password from stdin or a prompt only; and the role rules."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from core.console_rules import allows, check_password, UserRuleError
from db.engine import session_factory
from db.users import authenticate
from runtime import resources
from runtime.settings import get_settings
from workers.cli import main


@pytest.fixture
def cli(monkeypatch, database_url):
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    runner = CliRunner()
    yield lambda *args, input=None: runner.invoke(main, ["users", *args], input=input)
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def test_users_are_added_listed_changed_and_disabled_without_a_password_on_the_command_line(cli, database_url):
    added = cli("add", "anna", "--role", "operator", "--password-stdin", input="a long pass phrase\n")
    assert added.exit_code == 0 and "user anna added (operator)" in added.output
    prompted = cli("add", "bo", input="another pass phrase\nanother pass phrase\n")
    assert prompted.exit_code == 0, prompted.output
    assert "pass phrase" not in added.output + prompted.output
    assert cli("add", "anna", "--password-stdin", input="a long pass phrase\n").exit_code != 0  # taken
    short = cli("add", "cy", "--password-stdin", input="short\n")
    assert short.exit_code != 0 and "at least 12 characters" in short.output and "short\n" not in short.output
    assert cli("add", "dee", "--password", "x").exit_code == 2  # no such option: never an argument
    listed = cli("list")
    assert "anna" in listed.output and "operator" in listed.output and "$argon2" not in listed.output
    assert cli("set-role", "bo", "admin").exit_code == 0
    assert cli("set-role", "bo", "root").exit_code == 2
    sessions = session_factory(database_url)
    with sessions() as session:
        assert authenticate(session, "bo", "another pass phrase").role == "admin"
    assert cli("set-password", "anna", "--password-stdin", input="a brand new phrase\n").exit_code == 0
    assert cli("disable", "bo").exit_code == 0
    with sessions() as session:
        assert authenticate(session, "anna", "a long pass phrase") is None
        assert authenticate(session, "anna", "a brand new phrase").username == "anna"
        assert authenticate(session, "bo", "another pass phrase") is None  # disabled
    assert "no user 'zed'" in cli("disable", "zed").output


def test_roles_rank_viewer_operator_admin():
    assert allows("admin", "operator") and allows("operator", "operator") and not allows("viewer", "operator")
    assert not allows(None, "viewer") and not allows("root", "viewer")
    with pytest.raises(UserRuleError):
        check_password("x" * 11)
