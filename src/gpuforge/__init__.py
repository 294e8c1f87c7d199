"""gpuforge: provision bare-metal NVIDIA GPU servers into a multi-node LLM serving cluster."""

from pathlib import Path

__version__ = "0.1.0"


def project_root() -> Path:
    """The repository checkout this package runs from (editable install)."""
    return Path(__file__).resolve().parents[2]
