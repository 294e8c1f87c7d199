"""Which vault password the runner hands Ansible for the lab's inventory (gpuforge.runner.lab_vault_password)."""

from pathlib import Path

import pytest

from gpuforge.runner import lab_vault_password


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project checkout with the lab's inventory, another inventory and the password `lab up` writes."""
    root = tmp_path / "gpuforge"
    (root / "inventories" / "lab" / "group_vars" / "all").mkdir(parents=True)
    (root / "inventories" / "lab" / "hosts.yml").write_text("all: {}\n")
    (root / "inventories" / "prod").mkdir(parents=True)
    (root / ".lab").mkdir()
    (root / ".lab" / "vault-password").write_text("s3cret\n")
    return root


def test_lab_inventory_gets_the_lab_password(root):
    assert lab_vault_password(root, root / "inventories" / "lab") == root / ".lab" / "vault-password"


def test_relative_inventory_path_from_the_project_root(root, monkeypatch):
    monkeypatch.chdir(root)
    expected = root / ".lab" / "vault-password"
    assert lab_vault_password(root, Path("inventories/lab")) == expected
    assert lab_vault_password(root, Path("inventories/lab/")) == expected
    assert lab_vault_password(root, Path("./inventories/prod/../lab")) == expected


def test_relative_inventory_path_from_elsewhere_is_not_the_lab(root, monkeypatch):
    elsewhere = root.parent / "elsewhere"
    (elsewhere / "inventories" / "lab").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert lab_vault_password(root, Path("inventories/lab")) is None


def test_symlink_to_the_lab_inventory(root, tmp_path):
    link = tmp_path / "my-lab"
    link.symlink_to(root / "inventories" / "lab")
    assert lab_vault_password(root, link) == root / ".lab" / "vault-password"


def test_project_root_reached_through_a_symlink(root, tmp_path):
    alias = tmp_path / "checkout"
    alias.symlink_to(root)
    # The root as the user spelled it, the inventory by its real path, and the other way round.
    assert lab_vault_password(alias, root / "inventories" / "lab") == alias / ".lab" / "vault-password"
    assert lab_vault_password(root, alias / "inventories" / "lab") == root / ".lab" / "vault-password"


def test_another_inventory_gets_no_password(root):
    assert lab_vault_password(root, root / "inventories" / "prod") is None
    assert lab_vault_password(root, root / "inventories") is None
    assert lab_vault_password(root, root / "inventories" / "lab-old") is None


def test_another_checkouts_lab_inventory_gets_no_password(root, tmp_path):
    other = tmp_path / "other-checkout"
    (other / "inventories" / "lab").mkdir(parents=True)
    assert lab_vault_password(root, other / "inventories" / "lab") is None


def test_no_password_before_lab_up_wrote_one(root):
    (root / ".lab" / "vault-password").unlink()
    assert lab_vault_password(root, root / "inventories" / "lab") is None


def test_no_password_when_the_lab_state_directory_is_gone(root):
    (root / ".lab" / "vault-password").unlink()
    (root / ".lab").rmdir()
    assert lab_vault_password(root, root / "inventories" / "lab") is None


def test_a_file_inside_the_lab_inventory_uses_the_lab_password(tmp_path):
    """`gpuforge provision -i inventories/lab/hosts.yml` decrypts the lab's vault like the directory does."""
    root = tmp_path / "project"
    (root / "inventories" / "lab").mkdir(parents=True)
    (root / "inventories" / "lab" / "hosts.yml").write_text("all: {}\n")
    (root / ".lab").mkdir()
    (root / ".lab" / "vault-password").write_text("pw\n")
    assert lab_vault_password(root, root / "inventories" / "lab" / "hosts.yml") == root / ".lab" / "vault-password"
    assert lab_vault_password(root, root / "inventories" / "prod" / "hosts.yml") is None


def test_a_limit_keeps_localhost_for_preflight():
    from gpuforge.runner import with_localhost

    assert with_localhost(None) is None
    assert with_localhost("gpu-03") == "gpu-03,localhost"
    assert with_localhost("gpu_nodes:!gpu-01") == "gpu_nodes:!gpu-01,localhost"
    assert with_localhost("gpu-03,localhost") == "gpu-03,localhost"
    assert with_localhost("localhost:gpu-03") == "localhost:gpu-03"
