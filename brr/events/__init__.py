"""From a model's per-sample probabilities to seizure events, and their scores against annotations.

``probabilities`` stitches window outputs into one trace and bins it; ``postprocess`` turns a trace
into events; ``scoring`` scores events as SzCORE does. Each step comes whole and streamed: training
runs it on whole recordings, ``brr-infer`` on recordings of any length in bounded memory.
"""
