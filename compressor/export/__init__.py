"""Export: saving (JSON + safetensors, loading without running code) and ONNX checked in onnxruntime."""
from .manifest import SavedModelError
from .onnx import OnnxCheckError, OnnxExport, OnnxExportError, OnnxFileError, check_onnx, export_onnx
from .save import load_compressed, save_compressed

__all__ = ["OnnxCheckError", "OnnxExport", "OnnxExportError", "OnnxFileError", "SavedModelError", "check_onnx",
           "export_onnx", "load_compressed", "save_compressed"]
