"""Images: safe decode (limits, orientation, modes) and preprocessing into a model's input.

Modules: :mod:`.decode` (bytes to an RGB image within the pixel limits), :mod:`.preprocess`
(resize, centre crop, normalise into float32 CHW).

Import rule: the ground, numpy and Pillow only. It knows nothing of storage or models:
preprocessing takes any object with the fields of
:class:`~imgclassify.imaging.preprocess.PreprocessingSpec`.
"""
