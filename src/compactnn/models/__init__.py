"""Model zoo: ``create(name, data=...)`` builds a registered architecture (timm-style registry).

Names: ``lenet300``, ``lenet5``, ``resnet20``, ``resnet32``, ``resnet56``, ``vgg-small``. See ``list_models()``.
"""

from .lenet import LeNet5, LeNet300
from . import recurrent  # noqa: F401  (registers the clip-* models)
from . import idn  # noqa: F401  (registers the idn super-resolution model)
from . import padnet  # noqa: F401  (registers padnet)
from .registry import check_input_shape, create, describe_models, list_models, register_model
from .resnet import Add, BasicBlock, ResNet
from .vgg import VGG, VGG_SMALL

__all__ = ["create", "list_models", "describe_models", "register_model", "check_input_shape",
           "LeNet300", "LeNet5", "ResNet", "BasicBlock", "Add", "VGG", "VGG_SMALL"]
