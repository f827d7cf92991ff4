"""animacy: how the role an LLM is told to play shapes its behaviour and its activations.

The `animacy` package holds the data contract shared by both halves (schema, run-folder
readers and writers, roles from norm ratings) and the command line. `animacy.analysis`
(CPU statistics) and `animacy.collect` (GPU collector) build on it; analysis never imports
collect or torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("animacy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
