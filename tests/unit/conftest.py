import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
# Ansible plugins are not a package; import them the way Ansible's loader does, by path.
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
