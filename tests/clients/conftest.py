"""CLI tests drive a real training service with the fake runner from ``tests/training``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
