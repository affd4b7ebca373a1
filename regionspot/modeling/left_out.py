"""Frozen image encoders left out of a build, for training from a feature cache, which holds what they would give.

`build_regionspot(config, image_encoders=False)` builds SAM and CLIP without SAM's image encoder and CLIP's visual
tower (nearly all of their weights): a `LeftOutImageEncoder` stands in their place, keeps the sizes the rest of the
model reads, and refuses to run. With a checkpoint, the backbone is built on the meta device, the encoder left out,
and only what remains gets memory (`allocate_meta_tensors`) and the checkpoint's weights; the encoder is neither
initialised nor loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class LeftOutImageEncoder(nn.Module):
    """Stands where a frozen image encoder was not built; `kept` are the attributes of it the model still reads
    (e.g. SAM's `img_size`). Calling it raises an error that says why it is missing and what to do."""

    def __init__(self, *, name: str, **kept: Any) -> None:
        super().__init__()
        self.name = name
        for attribute, value in kept.items():
            setattr(self, attribute, value)

    def refuse(self) -> None:
        raise RuntimeError(
            f"{self.name} was not built (image_encoders=False: training reads every data set from a feature cache), "
            "so this model cannot read images. Build it with image_encoders=True (the default), or give every data "
            "set, data.val included, `features: DIR` (python -m regionspot.extract)."
        )

    def forward(self, *args: Any, **kwargs: Any) -> None:
        self.refuse()

    def extra_repr(self) -> str:
        return f"{self.name}: not built"


def allocate_meta_tensors(
    model: nn.Module, *, constants: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None
) -> None:
    """Give every parameter and buffer of `model` still on the meta device storage on the default device.

    Entries of the state dict get uninitialised memory: the caller loads them next, strictly. A buffer outside the
    state dict (a non-persistent constant, e.g. CLIP's causal attention mask) is made by `constants[name]` from its
    meta placeholder; one without a constant is an error, never left uninitialised. Tensors shared between modules
    stay shared.
    """
    constants = constants or {}
    persistent = set(model.state_dict())
    device = torch.get_default_device()
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # placeholder id -> (placeholder, kept alive; tensor)
    for module_name, module in model.named_modules(remove_duplicate=False):
        for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for leaf, tensor in table.items():
                if tensor is None or not tensor.is_meta:
                    continue
                name = f"{module_name}.{leaf}" if module_name else leaf
                if id(tensor) not in made:
                    if is_parameter:
                        real = nn.Parameter(torch.empty_like(tensor, device=device), requires_grad=tensor.requires_grad)
                    elif name in persistent:
                        real = torch.empty_like(tensor, device=device)
                    elif name in constants:
                        real = constants[name](tensor).to(device=device, dtype=tensor.dtype)
                    else:
                        raise RuntimeError(
                            f"{type(model).__name__}'s buffer {name!r} is not in its state dict and has no known "
                            "value: this model cannot be built without its image encoder (use image_encoders=True)"
                        )
                    made[id(tensor)] = (tensor, real)
                table[leaf] = made[id(tensor)][1]
