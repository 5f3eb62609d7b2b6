"""Compression methods, one file each; ``get_method(name)`` finds the handler of a config."""
from .base import Method, SearchContext, get_method, register_method
from .prune import PruneMethod
from .scs import ScsMethod

__all__ = ["Method", "PruneMethod", "ScsMethod", "SearchContext", "get_method", "register_method"]
