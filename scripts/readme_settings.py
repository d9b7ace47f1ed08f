"""Rewrite the settings table in README.md from wsgiproxy.settings.SETTINGS."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wsgiproxy.settings import settings_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new, n = re.subn(r"\| name \| default \| meaning \|\n(?:\|.*\n)+", settings_table() + "\n", text,
                 count=1)
if n != 1:
    raise SystemExit("README.md has no settings table to replace")
readme.write_text(new)
