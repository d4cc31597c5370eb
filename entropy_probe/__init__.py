"""entropy_probe: how information flows through a trained vision model.

Public API (everything else is internal)::

    from entropy_probe import profile, load_model, Profile, LayerEntropy

A thread that profiles keeps up to 256 MiB of scratch memory for its next profile
(``release_scratch_memory()`` frees it).
"""

from __future__ import annotations

__version__ = "0.1.0"

from entropy_probe.api import profile as profile
from entropy_probe.api import profile_loaded as profile_loaded
from entropy_probe.entropy._buffers import release_scratch_memory as release_scratch_memory
from entropy_probe.entropy.profile import LayerEntropy as LayerEntropy
from entropy_probe.entropy.profile import Profile as Profile
from entropy_probe.enums import ConvMethod as ConvMethod
from entropy_probe.enums import LayerKind as LayerKind
from entropy_probe.enums import Status as Status
from entropy_probe.errors import EntropyProbeError as EntropyProbeError
from entropy_probe.errors import SourceError as SourceError
from entropy_probe.errors import UnknownNameError as UnknownNameError
from entropy_probe.loading import LoadedModel as LoadedModel
from entropy_probe.loading import LoadOptions as LoadOptions
from entropy_probe.loading import load_model as load_model

__all__ = [
    "ConvMethod",
    "EntropyProbeError",
    "LayerEntropy",
    "LayerKind",
    "LoadOptions",
    "LoadedModel",
    "Profile",
    "SourceError",
    "Status",
    "UnknownNameError",
    "__version__",
    "load_model",
    "profile",
    "profile_loaded",
    "release_scratch_memory",
]
