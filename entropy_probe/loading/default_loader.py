"""``default``: the small well-trained MNIST CNN that ships inside the package."""

from __future__ import annotations

from entropy_probe.errors import SourceError
from entropy_probe.loading._base import LoadedModel, Loader, LoadOptions


class DefaultLoader(Loader):
    scheme = "default"
    description = "the embedded default model (an MNIST-5k CNN shipped in the package)"

    def load(self, ident: str, options: LoadOptions) -> LoadedModel:
        from entropy_probe.default_model import DEFAULT_MODEL_INFO, load_default_model

        if ident:
            raise SourceError(
                f"default:{ident}: the embedded default model takes no name; use 'default' "
                "(or give no SOURCE)"
            )
        info = DEFAULT_MODEL_INFO
        return LoadedModel(
            source="default",
            format="default",
            module=load_default_model(),
            input_shape=options.input_shape or tuple(info.input_shape),
            notes=[
                f"embedded default model: {info.name}, "
                f"held-out accuracy {info.accuracy:.2%} on {info.dataset}"
            ],
            meta={"architecture": info.name},
        )
