"""The output layers of one target in a viewer: segmentation, synthetic source, uncertain region, entropy.

Each is made the first time it is asked for, placed as the target scan is (scale, translation, rotation) and
carrying its grid in the metadata (so that an export lands on the scan's own affine); one of another shape (another
target) is replaced. What goes into them is the controller's business.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._geometry import layer_metadata
from ..engine.volumes import Volume
from .names import OUTPUT_LAYERS

#: colour of the uncertain region (what a reviewer looks at), apart from the segmentation's label colours
UNCERTAIN_COLOUR = "#ffd400"


class OutputLayers:
    def __init__(self, viewer):
        self.viewer = viewer
        #: the synthetic source and the uncertain region have been shown with a whole volume in them (they start
        #: hidden: empty, or nearly all uncertain during training)
        self.volume_shown = False

    def get(self, key: str, shape: tuple[int, ...] | None, volume: Volume, target_layer=None):
        """The layer ``key`` (of OUTPUT_LAYERS), made with ``shape`` if missing or of another shape (``shape`` None:
        whatever is there)."""
        name = OUTPUT_LAYERS[key]
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if shape is None or tuple(layer.data.shape) == tuple(shape):
                return layer
            self.viewer.layers.remove(name)  # another target: start afresh
        kw: dict[str, Any] = {"name": name, "scale": volume.spacing, "translate": (0.0, 0.0, 0.0),
                              "metadata": layer_metadata(volume)}
        if target_layer is not None:  # placed as the scan is, rotation (an oblique scan) included
            kw.update(scale=tuple(target_layer.scale), translate=tuple(target_layer.translate),
                      affine=np.asarray(target_layer.affine.affine_matrix))
        if key in ("seg", "uncertain"):
            layer = self.viewer.add_labels(np.zeros(shape, np.uint8), **kw)
            if key == "uncertain":  # its own colour: not one of the segmentation's label colours
                from napari.utils.colormaps import DirectLabelColormap

                layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 1: UNCERTAIN_COLOUR})
                layer.opacity = 0.45
                layer.visible = False  # during training nearly everything is uncertain: shown with the volume's
                self.volume_shown = False
        elif key == "entropy":
            layer = self.viewer.add_image(np.zeros(shape, np.float32), colormap="inferno", contrast_limits=(0, 1),
                                          blending="additive", opacity=0.6, **kw)
            layer.visible = False
        else:  # hidden until a whole-volume prediction fills it: an empty one is an opaque block over the scan
            layer = self.viewer.add_image(np.full(shape, -1.0, np.float32), colormap="gray", contrast_limits=(-1, 1),
                                          **kw)
            layer.visible = False
            self.volume_shown = False
        return layer

    def missing(self, shape: tuple[int, ...]) -> list[str]:
        """Keys of the output layers that do not exist yet, or do not fit a target of ``shape``."""
        return [k for k, name in OUTPUT_LAYERS.items()
                if name not in self.viewer.layers or tuple(self.viewer.layers[name].data.shape) != tuple(shape)]

    def show_volume_layers(self) -> None:
        """Once a whole volume fills them: the synthetic source and the uncertain region become visible."""
        if not self.volume_shown:
            self.viewer.layers[OUTPUT_LAYERS["synthetic"]].visible = True
            self.viewer.layers[OUTPUT_LAYERS["uncertain"]].visible = True
            self.volume_shown = True
