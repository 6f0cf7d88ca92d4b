"""The KFP components of tfpipes (installed as ``tfpipes_components``).

Each is a thin adapter over the library: KFP artifacts and parameters in, a config dataclass,
one library call, artifacts and metadata out. They run in the tfpipes image (``base_image``)
with ``install_kfp_package=False``: nothing is pip-installed at run time.
"""

from tfpipes_components.steps import export_op, fingerprint_op, preprocess_op, train_op
from tfpipes_components.tfjob_op import tfjob_train_op as tfjob_train_op  # a TFJob as the step

__all__ = ["fingerprint_op", "preprocess_op", "train_op", "export_op"]
