"""A stand-in for what brr uses of TensorRT's network definition and module, recording what is done to it."""

from __future__ import annotations

from enum import IntEnum
from types import SimpleNamespace

FP32, HALF, INT64 = "FLOAT", "HALF", "INT64"  # stand-ins for tensor types


class FakeTensor:
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class FakeLayer:
    type = "ELEMENTWISE"

    def __init__(self, name: str, outputs: list[tuple[str, str]], metadata: str | None = None):
        self.name, self.metadata = name, metadata
        self.outputs = [FakeTensor(n, d) for n, d in outputs]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


class IPluginV3QuickAOTBuild:
    """What a Python plugin's build capability is when the parser created its AOT implementation."""


class FakeCapability:
    def __init__(self, namespace: str, name: str):
        self.plugin_namespace, self.plugin_name = namespace, name


class FakeAotCapability(FakeCapability, IPluginV3QuickAOTBuild):
    pass


class FakePlugin:
    """A Python plugin as the ONNX parser created it: AOT (``aot=True``) or JIT."""

    def __init__(self, plugin_id: str, aot: bool):
        namespace, name = plugin_id.split("::")
        self.core = FakeCapability(namespace, name)
        self.build = (FakeAotCapability if aot else FakeCapability)(namespace, name)

    def get_capability_interface(self, kind: str):
        return {"CORE": self.core, "BUILD": self.build}[kind]


class FakePluginLayer(FakeLayer):
    """A plugin layer as ``get_layer`` gives it: the base class, the plugin reachable on the subclass."""

    type = "PLUGIN_V3"

    def __init__(self, name: str, outputs: list[tuple[str, str]], plugin: FakePlugin):
        super().__init__(name, outputs, f"[ONNX Layer: {name}]")
        self._plugin = plugin

    @property
    def plugin(self) -> FakePlugin:
        if type(self) is not FakeIPluginV3Layer:
            raise AttributeError("the plugin is on IPluginV3Layer")
        return self._plugin


class FakeIPluginV3Layer(FakePluginLayer):
    pass


class NetworkDefinitionCreationFlag(IntEnum):
    STRONGLY_TYPED = 5
    PREFER_AOT_PYTHON_PLUGINS = 6
    PREFER_JIT_PYTHON_PLUGINS = 7


# What brr uses of the tensorrt module itself.
FAKE_TENSORRT = SimpleNamespace(
    __version__="11.4.0", NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
    LayerType=SimpleNamespace(PLUGIN_V3="PLUGIN_V3"), PluginCapabilityType=SimpleNamespace(CORE="CORE", BUILD="BUILD"),
    IPluginV3QuickAOTBuild=IPluginV3QuickAOTBuild, IPluginV3Layer=FakeIPluginV3Layer)


class FakeNetwork:
    """What edit_network uses of trt.INetworkDefinition, recording the calls."""

    def __init__(self, layers: list[FakeLayer], outputs: list[str] = (), unfused: bool = True):
        self.layers, self.debug, self.unfused_marked = layers, [], False
        held = {t.name: t for layer in layers for t in layer.outputs}
        self.outputs = [held[name] for name in outputs]
        self.unmarked: list[str] = []
        if unfused:
            self.mark_unfused_tensors_as_debug_tensors = self._mark_unfused

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> FakeLayer:
        return self.layers[index]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]

    def unmark_output(self, tensor: FakeTensor) -> None:
        self.outputs.remove(tensor)
        self.unmarked.append(tensor.name)

    def mark_debug(self, tensor: FakeTensor) -> bool:
        self.debug.append(tensor.name)
        return True

    def _mark_unfused(self) -> bool:
        self.unfused_marked = True
        return True


def tensorrt_usable() -> bool:
    """Whether the real TensorRT and a GPU are here (then the missing-TensorRT paths cannot run)."""
    from brr.backends.trt.loader import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True
