"""Models the zoos lack but recipes need (registered by name with :func:`register_model`)."""
from .cifar_resnet import CifarResNet
from .darts_cells import GENOTYPES, DartsNetwork, Genotype
from .darts_search import DartsSearchNetwork
from .registry import MODELS, RECIPES, register_model
from .wide_resnet import WideResNet

__all__ = ["GENOTYPES", "CifarResNet", "DartsNetwork", "DartsSearchNetwork", "Genotype", "MODELS", "RECIPES", "WideResNet", "register_model"]
