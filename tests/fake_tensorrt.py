"""A stand-in for what brr uses of TensorRT's network definition, recording what is done to it."""

from __future__ import annotations

FP32, HALF, INT64 = "FLOAT", "HALF", "INT64"  # stand-ins for trt.float32 and the types edit_network leaves alone


class FakeTensor:
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, name: str, outputs: list[tuple[str, str]], metadata: str | None = None):
        self.name, self.metadata, self.precision = name, metadata, None
        self.outputs = [FakeTensor(n, d) for n, d in outputs]
        self.output_types: dict[int, str] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


class FakeNetwork:
    """What edit_network uses of trt.INetworkDefinition, recording the calls."""

    def __init__(self, layers: list[FakeLayer], unfused: bool = True):
        self.layers, self.debug, self.unfused_marked = layers, [], False
        if unfused:
            self.mark_unfused_tensors_as_debug_tensors = self._mark_unfused

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]

    def mark_debug(self, tensor: FakeTensor) -> bool:
        self.debug.append(tensor.name)
        return True

    def _mark_unfused(self) -> bool:
        self.unfused_marked = True
        return True
