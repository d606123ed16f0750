"""Super-resolution: the IDN model's tools -- MATLAB-compatible image functions (:mod:`.matlab`), the Caffe importer
(:mod:`.caffe`, :mod:`.protobuf`), the authors' test protocol (:mod:`.evaluate`), tiled upscaling (:mod:`.upscale`) and
CPU training (:mod:`.train`). The model itself is :class:`compactnn.models.idn.IDN` (``models.create("idn")``).
"""
