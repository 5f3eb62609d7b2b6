"""compressor: make existing vision models smaller and faster."""
from .decision import Decision
from .export import export_onnx, load_compressed, save_compressed, slice_model
from .space import Space, trace
from .zoo import create_model, list_models

__all__ = ["Decision", "Space", "create_model", "export_onnx", "list_models", "load_compressed",
           "save_compressed", "slice_model", "trace"]
__version__ = "0.1.0"
