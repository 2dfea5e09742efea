"""Layers with a PyTorch-like protocol: ``y = layer(x)``, ``dx = layer.backward(dy)``."""

from .layers import Dropout, Linear, ReLU, Sequential, Sigmoid, Tanh
from .module import Module, Parameter
from .normalization import BatchNorm, LayerNorm

__all__ = ["Module", "Parameter", "BatchNorm", "LayerNorm", "Linear", "ReLU", "Sigmoid", "Tanh",
           "Dropout", "Sequential"]
