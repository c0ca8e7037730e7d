"""The console tests share tests/interop's helpers (running `medlake serve`)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "interop"))
