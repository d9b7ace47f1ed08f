"""Rewrite the settings table in docs/settings.md from wsgiproxy.settings.SETTINGS.

Run it after adding or changing a setting; tests/test_settings.py fails while the page
and the code disagree.
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsgiproxy.settings import settings_table

page = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
text = page.read_text()
new, n = re.subn(r"\| name \| default \| meaning \|\n(?:\|.*\n)+", settings_table() + "\n", text,
                 count=1)
if n != 1:
    raise SystemExit("docs/settings.md has no settings table to replace")
page.write_text(new)
