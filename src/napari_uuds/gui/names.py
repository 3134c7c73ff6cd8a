"""Names of the output layers the widget makes on the target's grid (one home: controller, review, widget)."""
OUTPUT_LAYERS = {"synthetic": "synthetic source", "seg": "segmentation", "entropy": "entropy",
                 "uncertain": "uncertain region"}
