"""Weights from local files: unwrap, strip ``module.``, load with the missing / unexpected keys named.

Nothing is downloaded: every backbone is built without weights and filled
from a file the user brings. Files are read with ``torch.load(...,
weights_only=True)`` (tensors and plain containers only, no code runs), or
with safetensors for ``.safetensors`` files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Keys under which training scripts commonly nest the model's state_dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "network")
SHOWN_KEYS = 8


def read_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` state_dict stored in ``path``, unwrapped, ``module.`` stripped.

    Accepts a bare state_dict or one nested under a common wrapper key
    (``{'state_dict': ...}``, ``{'model': ...}``, ...), saved by ``torch.save``
    or as ``.safetensors``. DataParallel / DDP prefixes (``module.``) are removed.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file holds no state_dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weight file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: object = load_file(str(path), device="cpu")
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    state = unwrap_state_dict(loaded, source=str(path))
    return strip_prefix(state, "module.")


def unwrap_state_dict(loaded: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """Descend through wrapper keys until a mapping of tensors is reached."""
    current = loaded
    for _ in range(4):  # wrappers are rarely more than two deep
        if isinstance(current, Mapping) and current and all(isinstance(v, Tensor) for v in current.values()):
            return dict(current)
        if not isinstance(current, Mapping):
            break
        inner = next((current[key] for key in WRAPPER_KEYS if isinstance(current.get(key), Mapping)), None)
        if inner is None:
            break
        current = inner
    keys = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else type(loaded).__name__
    raise ValueError(
        f"{source} holds no state_dict of tensors (a bare state_dict, or one under "
        f"{', '.join(map(repr, WRAPPER_KEYS))}); found {keys}"
    )


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` with ``prefix`` removed from every key that starts with it (others unchanged)."""
    return {(key[len(prefix):] if key.startswith(prefix) else key): value for key, value in state.items()}


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")


def load_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    name: str,
    source: str,
    optional: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model``; missing keys, shape mismatches and extra blocks are errors.

    Extra keys under one of the model's own top-level children (``layer1.2.*``
    for a ResNet-18: a ResNet-34 file) are errors; other extra keys (a
    queue, a second encoder) are logged and ignored.

    Args:
        model: the module to fill.
        state: flat state_dict (already unwrapped and renamed to ``model``'s names).
        name: the model's name, for messages.
        source: where ``state`` came from (a file path), for messages.
        optional: key prefixes that may be missing (e.g. a classifier the
            feature extractor drops); they are logged, not raised.

    Raises:
        ValueError: naming the missing keys and the mismatched shapes.
    """
    own = model.state_dict()
    optional = tuple(optional)
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    missing = [key for key in own if key not in state]
    required = [key for key in missing if not key.startswith(optional) and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    # extra keys inside the model's own blocks (layer1.2.* for a resnet18) mean another architecture
    roots = {key.split(".", 1)[0] for key in own}
    foreign = [key for key in unexpected if key.split(".", 1)[0] in roots and not key.startswith(optional)]
    if required or mismatched or foreign:
        problems = []
        if required:
            problems.append(f"missing keys: {_listing(required)}")
        if foreign:
            problems.append(f"keys the model's blocks do not have (another architecture?): {_listing(foreign)}")
        if mismatched:
            problems.append(f"shape mismatches: {'; '.join(mismatched[:SHOWN_KEYS])}")
        raise ValueError(f"weights {source} do not fit {name}: {'; '.join(problems)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    skipped = [key for key in missing if key not in required and not key.endswith("num_batches_tracked")]
    if skipped:
        log.info("%s: %s has no %s (not used by the feature extractor)", name, source, _listing(skipped))
    if unexpected:
        log.warning("%s: ignored keys of %s that the model does not have: %s", name, source, _listing(unexpected))
    log.info("%s: loaded %d tensors from %s", name, len(own) - len(missing), source)


def torchvision_resnet_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision-layout ResNet state_dict (conv1, bn1, layer1-4, fc) to :class:`ResNet`'s names.

    ``conv1``/``bn1`` -> ``stem.0``/``stem.1``; ``layer{i}.{j}.downsample.{k}`` ->
    ``stages.{i-1}.{j}.shortcut.{k}``; other ``layer{i}.{j}.*`` -> ``stages.{i-1}.{j}.*``.
    Keys outside the backbone (``fc.*``, a projection head) are left as they are.
    """
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "conv1":
            key = f"stem.0.{rest}"
        elif head == "bn1":
            key = f"stem.1.{rest}"
        elif head.startswith("layer") and head[5:].isdigit():
            key = f"stages.{int(head[5:]) - 1}.{rest.replace('.downsample.', '.shortcut.')}"
        renamed[key] = value
    return renamed


def is_torchvision_resnet(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` uses torchvision's ResNet names (``conv1.weight``, ``layer1.0.conv1.weight``)."""
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state
