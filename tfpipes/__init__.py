"""tfpipes: preprocess, train and export TensorFlow models as Kubeflow Pipelines components.

Public pieces: the CLI (``tfpipes``), the config dataclasses and the step functions
``tfpipes.preprocess.preprocess``, ``tfpipes.training.train`` and ``tfpipes.export.export``.
Importing this package is cheap: TensorFlow is imported only by the modules that need it.
"""

__version__ = "0.1.0"

from tfpipes.tf_log import quiet_tensorflow_import as _quiet_tensorflow_import  # noqa: E402

_quiet_tensorflow_import()
