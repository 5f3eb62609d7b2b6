"""From a decision to a dense model: slicing, saving, ONNX."""
from .onnx import OnnxCheckError, OnnxExport, OnnxExportError, check_onnx, export_onnx
from .save import load_compressed, save_compressed
from .slice import SliceError, slice_model

__all__ = ["OnnxCheckError", "OnnxExport", "OnnxExportError", "SliceError", "check_onnx", "export_onnx", "load_compressed",
           "save_compressed", "slice_model"]
