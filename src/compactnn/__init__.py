"""compactnn: make PyTorch models really smaller and faster.

``compress(model, config, data=...)`` is the one verb; the config's class picks the method. See the README.
"""

from . import config, errors
from .api import compress, describe_methods, list_methods, register_method

__version__ = "0.1.0"

# the subpackages register their methods, models and data sets on import
from . import data, decompose, graph, models, pack, pq, prune, quantize, report, train  # noqa: E402,F401
from . import distill  # noqa: E402,F401
from .plan import plan  # noqa: E402
from .prepare import convert, prepare  # noqa: E402

__all__ = ["compress", "plan", "prepare", "convert", "describe_methods", "list_methods", "register_method", "config", "errors", "__version__"]
