"""Compression methods, one file each; ``get_method(name)`` finds the handler of a config."""
from .base import Method, SearchContext, get_method, register_method
from .grow import GrowMethod
from .prune import PruneMethod
from .scs import ScsMethod
from .tas import TasMethod

__all__ = ["GrowMethod", "Method", "PruneMethod", "ScsMethod", "SearchContext", "TasMethod", "get_method", "register_method"]
