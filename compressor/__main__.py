"""``python -m compressor ...`` is the ``compress`` command (also under ``torchrun -m compressor``)."""
import sys

from .cli import main

sys.exit(main())
