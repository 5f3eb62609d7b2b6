"""Compression methods, one file each, registered on import (``get_method(name)`` finds one)."""
from .base import Method, SearchContext, SearchResult, get_method, methods, register_method
from .scs import ScsConfig, ScsMethod
from .prune import PruneConfig, PruneMethod
from .tas import TasConfig, TasMethod
from .grow import GrowConfig, GrowMethod
from .darts import DartsConfig, DartsMethod

__all__ = ["DartsConfig", "DartsMethod", "GrowConfig", "GrowMethod", "Method", "PruneConfig", "PruneMethod", "ScsConfig", "ScsMethod",
           "SearchContext", "SearchResult", "TasConfig", "TasMethod", "get_method", "methods", "register_method"]
