"""Bait for the fuzzing tests: importing this module leaves a marker file beside it, so a test can
tell that code named in a file was imported.  Nothing may ever import it."""
from pathlib import Path

(Path(__file__).parent / "fuzz_bait_ran").write_text("a file named this module and compressor imported it\n")


def build(**kwargs):
    raise RuntimeError("the bait's factory was called")
