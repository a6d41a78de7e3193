"""Where rooftop's shipped files are: the Hydra config tree (``conf/``), the evaluation text, the
calibration data and the report schemas — in a source checkout or an installed wheel (where
``conf/`` is packaged as ``compiler/conf``). A leaf module: it imports nothing of rooftop's."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: the checkout's root (the folder holding ``conf/`` beside ``compiler/``); in a wheel, site-packages
REPO_ROOT = PACKAGE_DIR.parent
CALIBRATION_DATA = PACKAGE_DIR / "perf" / "calibration" / "data"
EVAL_TEXT = PACKAGE_DIR / "data" / "eval_text.txt"


def conf_dir() -> Path:
    """``conf/`` inside an installed wheel (``compiler/conf``) or beside the package in a checkout."""
    for cand in (PACKAGE_DIR / "conf", REPO_ROOT / "conf"):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError("rooftop's conf/ directory was not found next to the package")


def relative(path: Path | str) -> str:
    """``path`` relative to the checkout's root when it lies inside it (stable text for reports)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
