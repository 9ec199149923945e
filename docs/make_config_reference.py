"""Write docs/configuration.md from the config classes: `python docs/make_config_reference.py` (any directory)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helper.config import config_reference  # noqa: E402

if __name__ == "__main__":
    (ROOT / "docs" / "configuration.md").write_text(config_reference())
    print("wrote docs/configuration.md")
