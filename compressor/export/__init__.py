"""From a decision to a dense model: slicing, saving, ONNX."""
from .manifest import SavedModelError
from .onnx import OnnxCheckError, OnnxExport, OnnxExportError, OnnxFileError, check_onnx, export_onnx
from .save import load_compressed, save_compressed
from .slice import SliceError, slice_model

__all__ = ["OnnxCheckError", "OnnxExport", "OnnxExportError", "OnnxFileError", "SavedModelError", "SliceError", "check_onnx", "export_onnx", "load_compressed",
           "save_compressed", "slice_model"]
