"""Map the channel labels of a clinical EDF onto the model's 19-channel 10-20 order.

Recognised label styles (any case, surrounding blanks ignored):
``Fp1``, ``FP1``, ``EEG FP1``, ``EEG FP1-REF``, ``EEG FP1-LE``, ``EEG Fp1-AR``, ``FP1-AVG``,
``POL Fp1``, ``Fp1-A1`` / ``-A2`` / ``-M1`` / ``-M2`` / ``-LE`` (ear or mastoid references),
and the 10-10 synonyms T7/T8/P7/P8 for T3/T4/T5/T6.
A bipolar derivation such as ``FP1-F7`` is *not* a channel of this referential montage and is
never mapped. Labels of other signals (EKG, photic, annotations) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from brr.data.errors import AmbiguousChannelsError, MissingChannelsError
from brr.montage import CHANNELS, SYNONYMS

__all__ = ["ChannelMapping", "canonical_channel", "map_channels"]

# Common-reference suffixes: linked ears, average, ear/mastoid electrodes, the generic "REF".
_REFERENCE_SUFFIXES = ("REF", "LE", "AR", "AVG", "AV", "A1", "A2", "M1", "M2")
# Recording-system prefixes put in front of the electrode name ("EEG FP1-REF", "POL Fp1").
_PREFIX = re.compile(r"^(?:EEG|POL)[\s_-]+")
_SUFFIX = re.compile(r"[\s_-]+(?:" + "|".join(_REFERENCE_SUFFIXES) + r")$")

_BY_UPPER_NAME: dict[str, str] = {name.upper(): name for name in CHANNELS}
_BY_UPPER_NAME.update({alias.upper(): SYNONYMS[alias] for alias in SYNONYMS})


def canonical_channel(label: str) -> str | None:
    """The 10-20 name (as spelled in ``CHANNELS``) that ``label`` denotes, or None if it is not one."""
    name = label.strip().upper()
    name = _PREFIX.sub("", name)
    name = _SUFFIX.sub("", name)
    return _BY_UPPER_NAME.get(name.strip())


@dataclass(frozen=True)
class ChannelMapping:
    """Where each montage channel comes from: ``indices[i]`` is the file signal of ``CHANNELS[i]``."""

    indices: tuple[int, ...]
    source_labels: tuple[str, ...]


def map_channels(
    labels: Sequence[str],
    channel_map: Mapping[str, str | None] | None = None,
    path: str | os.PathLike | None = None,
) -> ChannelMapping:
    """Find the 19 montage channels among a file's signal ``labels``.

    ``channel_map`` maps file labels (exactly as in the file) to a 10-20 name (any spelling that
    :func:`canonical_channel` understands) and wins over automatic recognition; mapping a label to
    None excludes it, which resolves ambiguities. Keys that are not in the file are ignored, so one
    map can serve a whole corpus.

    Raises :class:`MissingChannelsError` if channels are missing and :class:`AmbiguousChannelsError`
    if two labels claim one channel (two explicit ones, or two automatic ones).
    ``ValueError`` if a ``channel_map`` value is not a 10-20 name: that is a caller bug, not a file
    problem.
    """
    channel_map = dict(channel_map or {})
    explicit: dict[str, list[int]] = {}
    automatic: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        if label in channel_map:
            target = channel_map[label]
            if target is None:
                continue
            name = canonical_channel(target)
            if name is None:
                raise ValueError(
                    f"channel_map[{label!r}] = {target!r} is not one of the 10-20 channels {CHANNELS}"
                )
            explicit.setdefault(name, []).append(index)
        else:
            name = canonical_channel(label)
            if name is not None:
                automatic.setdefault(name, []).append(index)

    indices: list[int] = []
    missing: list[str] = []
    for name in CHANNELS:
        # An explicit mapping overrides whatever the automatic recognition found for that channel.
        candidates = explicit.get(name) or automatic.get(name) or []
        if len(candidates) > 1:
            raise AmbiguousChannelsError(path, name, [labels[i] for i in candidates])
        if candidates:
            indices.append(candidates[0])
        else:
            missing.append(name)
    if missing:
        raise MissingChannelsError(path, missing, list(labels))
    return ChannelMapping(indices=tuple(indices), source_labels=tuple(labels[i] for i in indices))
