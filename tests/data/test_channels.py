import random

import pytest

from brr.data import (
    AmbiguousChannelsError,
    MissingChannelsError,
    RecordingError,
    map_channels,
)
from brr.data.channels import canonical_channel
from brr.montage import CHANNELS

TUH_REF = [f"EEG {name.upper()}-REF" for name in CHANNELS]


@pytest.mark.parametrize(
    "label",
    [
        "Fp1",
        "FP1",
        "fp1",
        "EEG FP1-REF",
        "EEG FP1-LE",
        "EEG Fp1-AR",
        "FP1-AVG",
        "  EEG FP1-REF  ",
        "EEG-FP1-REF",
        "POL Fp1",
        "Fp1-A1",
        "FP1-M2",
        "EEG FP1",
    ],
)
def test_label_styles_map_to_fp1(label):
    assert canonical_channel(label) == "Fp1"


@pytest.mark.parametrize(
    "label, name",
    [
        ("T7", "T3"),
        ("EEG T8-REF", "T4"),
        ("P7-LE", "T5"),
        ("p8", "T6"),
        ("EEG T3-REF", "T3"),
        ("EEG FZ-REF", "Fz"),
        ("cz", "Cz"),
        ("EEG PZ-LE", "Pz"),
        ("O2-AVG", "O2"),
    ],
)
def test_synonyms_and_midline(label, name):
    assert canonical_channel(label) == name


@pytest.mark.parametrize(
    "label",
    ["FP1-F7", "EEG FP1-F7", "EKG", "EEG EKG1-REF", "Photic", "A1", "EDF Annotations", "", "FP1X", "T9"],
)
def test_non_montage_labels_are_not_mapped(label):
    assert canonical_channel(label) is None


def test_tuh_labels_with_extra_signals_in_any_order():
    labels = TUH_REF + ["EEG EKG1-REF", "EEG A1-REF", "PHOTIC-REF"]
    random.Random(0).shuffle(labels)
    mapping = map_channels(labels)
    assert mapping.source_labels == tuple(TUH_REF)
    assert [labels[i] for i in mapping.indices] == TUH_REF


def test_modern_10_10_names():
    labels = [{"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}.get(name, name) for name in CHANNELS]
    mapping = map_channels(labels)
    assert mapping.indices == tuple(range(19))
    assert mapping.source_labels[CHANNELS.index("T3")] == "T7"


def test_channel_map_for_odd_labels():
    labels = [f"E{i}" for i in range(19)]
    channel_map = {f"E{i}": name for i, name in enumerate(reversed(CHANNELS))}
    mapping = map_channels(labels, channel_map)
    assert mapping.indices == tuple(reversed(range(19)))


def test_channel_map_overrides_automatic_recognition():
    labels = TUH_REF + ["Fp1 (new cap)"]
    mapping = map_channels(labels, {"Fp1 (new cap)": "FP1", "absent label": "O2"})
    assert mapping.source_labels[0] == "Fp1 (new cap)"
    assert mapping.indices[0] == 19


def test_two_labels_for_one_channel_is_an_error_naming_both():
    labels = TUH_REF + ["EEG T7-REF"]
    with pytest.raises(AmbiguousChannelsError) as info:
        map_channels(labels, path="rec.edf")
    assert info.value.channel == "T3"
    assert set(info.value.labels) == {"EEG T3-REF", "EEG T7-REF"}
    assert (
        "EEG T3-REF" in str(info.value) and "EEG T7-REF" in str(info.value) and "rec.edf" in str(info.value)
    )
    assert isinstance(info.value, RecordingError)


def test_two_explicit_labels_for_one_channel_is_an_error():
    labels = TUH_REF + ["X1", "X2"]
    with pytest.raises(AmbiguousChannelsError):
        map_channels(labels, {"X1": "O2", "X2": "O2"})


def test_channel_map_none_excludes_a_label():
    labels = TUH_REF + ["EEG T7-REF"]
    mapping = map_channels(labels, {"EEG T7-REF": None})
    assert mapping.source_labels[CHANNELS.index("T3")] == "EEG T3-REF"


def test_missing_channels_are_listed_with_the_available_labels():
    labels = [label for label in TUH_REF if label not in ("EEG O2-REF", "EEG CZ-REF")]
    with pytest.raises(MissingChannelsError) as info:
        map_channels(labels, path="/data/x.edf")
    assert info.value.missing == ("Cz", "O2")
    assert info.value.available == tuple(labels)
    message = str(info.value)
    assert "/data/x.edf" in message and "Cz, O2" in message and "EEG FP1-REF" in message
    assert info.value.path == "/data/x.edf"


def test_channel_map_to_unknown_name_is_a_caller_error():
    with pytest.raises(ValueError, match="not one of the 10-20"):
        map_channels(TUH_REF + ["X"], {"X": "Oz"})
