"""Shared graph machinery: the marker modules graph tools look for, one torch.fx tracer with its shape pass, and
small module utilities (find, replace, eval mode). Pruning, quantization and decomposition all use these.
"""

from .markers import Add, Concat
from .modules import eval_mode, get_module, pair, restore_modes, set_module, weight_read_by_parent
from .trace import Tracer, first_line, record_shapes, register_leaf, source_line, trace

__all__ = ["Add", "Concat", "Tracer", "eval_mode", "first_line", "get_module", "pair", "record_shapes",
           "register_leaf", "restore_modes", "set_module", "source_line", "trace", "weight_read_by_parent"]
