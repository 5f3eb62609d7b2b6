"""Label-propagation rules, one small module per kind of op; importing registers them."""
from . import attention, layers, movement, reduce  # noqa: F401 - registration side effects
from .base import merge_rule, pointwise_rule, register, rule_for

__all__ = ["merge_rule", "pointwise_rule", "register", "rule_for"]
