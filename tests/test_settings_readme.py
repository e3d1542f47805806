"""README's settings tables name every setting of ``runtime/settings.py`` by its variable, and only those."""
from __future__ import annotations

import re
from pathlib import Path

from runtime.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"

#: Table columns that name settings (the settings tables' ``variable``, the scheduler jobs' ``setting``).
SETTING_COLUMNS = ("variable", "setting")

_NAME = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented(text: str) -> dict[str, int]:
    """``{variable: line}`` of every name in backticks in a settings column of a Markdown table."""
    found: dict[str, int] = {}
    lines = text.splitlines()
    column = None
    for number, line in enumerate(lines, 1):
        if not line.startswith("|"):
            column = None
            continue
        if column is None:
            headers = [cell.lower() for cell in _cells(line)]
            separator = lines[number] if number < len(lines) else ""
            if re.fullmatch(r"\|?[\s:|-]+\|?", separator) and any(name in headers for name in SETTING_COLUMNS):
                column = next(index for index, name in enumerate(headers) if name in SETTING_COLUMNS)
            else:
                column = -1  # a table of something else
            continue
        cells = _cells(line)
        if column < 0 or column >= len(cells) or set(cells[column]) <= set("-: "):
            continue
        for name in _NAME.findall(cells[column]):
            found.setdefault(name, number)
    return found


def test_the_parser_reads_settings_columns_only():
    text = ("| variable | meaning | default |\n| --- | --- | --- |\n| `A_B` / `C_D` | uses `E_F` | 1 |\n\n"
            "| job | setting |\n|---|---|\n| `sync` | `G_H` |\n\n| metric | meaning |\n|---|---|\n| `I_J` | x |\n")
    assert documented(text) == {"A_B": 3, "C_D": 3, "G_H": 7}


def test_every_setting_is_in_a_readme_table_and_every_documented_one_exists():
    names = documented(README.read_text())
    fields = {field.upper() for field in Settings.model_fields}
    assert len(names) > 50  # the tables were found
    missing = sorted(fields - set(names))
    assert not missing, f"settings with no row in a README settings table: {', '.join(missing)}"
    unknown = sorted(f"{name} (README.md:{line})" for name, line in names.items() if name not in fields)
    assert not unknown, f"README settings tables name what runtime/settings.py does not have: {', '.join(unknown)}"
