"""tensoredge toolkit: load, compress, evaluate and drive the export and bench stages.

Kept import-light: submodules import torch and transformers, this package does not.
"""

__version__ = "0.1.0"
