"""compressor: make existing vision models smaller and faster."""
from . import choices as _choices  # noqa: F401 - registers the built-in kinds of choice
from . import methods as _methods  # noqa: F401 - registers the built-in methods
from . import models as _models  # noqa: F401 - registers our own models (and the cell edges' candidates)
from .api import CompressResult, compress
from .decision import Decision
from .export import export_onnx, load_compressed, save_compressed
from .frontend import trace
from .recipe import Recipe, load_recipe
from .space import Space
from .surgery import slice_model
from .zoo import create_model, list_models

__all__ = ["CompressResult", "Decision", "Recipe", "Space", "compress", "create_model", "export_onnx",
           "list_models", "load_compressed", "load_recipe", "save_compressed", "slice_model", "trace"]
__version__ = "0.1.0"
