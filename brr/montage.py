"""The 10-20 montage the detector is trained on: channel order, label synonyms, neighbours.

The order is part of the model's input contract: index i of the channel axis is always
``CHANNELS[i]``. Every layer that reads or writes EEG channels imports it from here.
"""

from __future__ import annotations

CHANNELS: tuple[str, ...] = (
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz",
    "Pz", "Fp2", "F4", "C4", "P4", "F8", "T4", "T6", "O2",
)
N_CHANNELS = len(CHANNELS)

# Modern 10-10 names for the same four electrodes.
SYNONYMS: dict[str, str] = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}

# Scalp neighbours of the 10-20 system: the longitudinal chains of the temporal-central-parietal
# bipolar montage plus the transverse rows. It is connected, so its Laplacian has one zero eigenvalue.
NEIGHBOUR_PAIRS: tuple[tuple[str, str], ...] = (
    ("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1"),
    ("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2"),
    ("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"),
    ("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2"),
    ("Fz", "Cz"), ("Cz", "Pz"),
    ("F7", "F3"), ("F3", "Fz"), ("Fz", "F4"), ("F4", "F8"),
    ("T3", "C3"), ("C3", "Cz"), ("Cz", "C4"), ("C4", "T4"),
    ("T5", "P3"), ("P3", "Pz"), ("Pz", "P4"), ("P4", "T6"),
    ("Fp1", "Fp2"), ("O1", "O2"),
)


def pair_indices() -> list[tuple[int, int]]:
    """The 171 electrode pairs i<j in row-major order: the edge axis of the edge stream."""
    return [(i, j) for i in range(N_CHANNELS) for j in range(i + 1, N_CHANNELS)]
