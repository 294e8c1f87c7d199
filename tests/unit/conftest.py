import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
# Ansible plugins are not a package; import them the way Ansible's loader does, by path.
sys.path.insert(0, str(ROOT / "plugins" / "filter"))


def ansible_env(home: Path, **extra: str) -> dict:
    """The environment the unit tests run Ansible in: the project's ansible.cfg (so its plugins), facts in
    memory, and HOME under `home`, not the user's."""
    return {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin", "HOME": str(home),
            "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_CACHE_PLUGIN": "memory", **extra}


def run_playbook(book: Path, *args: str, env: dict | None = None, prefix: tuple = ()):
    """ansible-playbook on localhost (local connection), from the book's directory, with ansible_env there.
    The controller's own Python runs the modules: a pyenv shim found by discovery may not."""
    ansible = str(Path(sys.executable).parent / "ansible-playbook")
    return subprocess.run([*prefix, ansible, "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book), *args],
                          capture_output=True, text=True, cwd=book.parent,
                          env=env if env is not None else ansible_env(book.parent))
