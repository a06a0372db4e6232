"""The peer's model runtime: a small MLServer `MLModel` that calls onnxruntime.

Copied into each model folder of the peer's model repository and imported by MLServer 1.7.1
(in its own virtual environment), never by faasd. It is what a user writes to serve an ONNX
model with MLServer, which ships no ONNX runtime of its own. `parameters.extra.threads` sets
onnxruntime's intra-op threads, the same count a faasd sandbox gets from its vcpu.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel  # type: ignore[import-not-found,unused-ignore]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found,unused-ignore]
from mlserver.types import (  # type: ignore[import-not-found,unused-ignore]
    InferenceRequest,
    InferenceResponse,
)
from mlserver.utils import get_model_uri  # type: ignore[import-not-found,unused-ignore]


class OnnxModel(MLModel):  # type: ignore[misc,unused-ignore]
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("threads", 1))
        options.inter_op_num_threads = 1
        spinning = "1" if extra.get("spinning", False) else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        arrays = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._outputs, arrays, strict=True)
            ],
        )
