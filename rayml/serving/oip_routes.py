"""Open Inference Protocol v2 (REST) routes of the recommender, for the ranker and the retriever's user tower.

Bodies are parsed whatever their content type, in JSON or with Triton's binary tensor extension (what
``tritonclient.http`` sends by default), and answered in the form each output asked for.
"""

# No `from __future__ import annotations`: FastAPI must see the real classes.

from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from rayml.serving import oip
from rayml.serving.http_api import (
    SECURED,
    Authorization,
    api,
    document_security,
    exact_int64,
    oip_error,
    oip_responses,
)
from rayml.serving.recommender import RecommenderCore

INFER_BODY = {**SECURED, "requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


class RankerUnavailable(RuntimeError):
    """The split plan's Ranker deployment did not answer."""


class OIPRoutes:
    """Mixin of the recommender deployment; needs ``self.core``, ``self.auth``, ``self._rank`` and ``self._ready``."""

    core: RecommenderCore
    auth: Any

    def _oip_models(self) -> dict[str, tuple[str, oip.TensorSpec, oip.TensorSpec]]:
        ranker = self.core.ranker
        models = {"ranker": (ranker.model_version,
                             oip.TensorSpec(name="features", datatype="FP32", shape=[-1, ranker.width]),
                             oip.TensorSpec(name="score", datatype="FP32", shape=[-1]))}
        retriever = self.core.retrieval.retriever
        if retriever is not None:
            session = retriever.session
            models["retriever"] = (
                retriever.model_version,
                oip.TensorSpec(name="user_features", datatype="FP32", shape=[-1, session.get_inputs()[0].shape[1]]),
                oip.TensorSpec(name="embedding", datatype="FP32", shape=[-1, session.get_outputs()[0].shape[1]]),
            )
        return models

    def _oip_model(self, name: str, version: str | None):
        models = self._oip_models()
        if name not in models:
            return None, oip_error(404, f"model_name: unknown model {name!r}; served: {sorted(models)}")
        label, spec_in, spec_out = models[name]
        served = label.rsplit(":v", 1)[1]
        if version is not None and version != served:
            return None, oip_error(404, f"model_version: {name} serves version {served}, not {version!r}")
        return (label, served, spec_in, spec_out), None

    @api.get("/v2")
    def oip_server(self) -> dict:
        return {"name": "rayml", "version": api.version, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/models/{name}", responses=oip_responses(401, 403, 404), openapi_extra=SECURED)
    @api.get("/v2/models/{name}/versions/{version}", responses=oip_responses(401, 403, 404), openapi_extra=SECURED)
    def oip_metadata(self, name: str, authorization: Authorization = None, version: str | None = None):
        self.auth.check(authorization, "read")
        model, error = self._oip_model(name, version)
        if error is not None:
            return error
        _, served, spec_in, spec_out = model
        return oip.ModelMetadata(name=name, versions=[served], platform="onnxruntime_onnx", inputs=[spec_in],
                                 outputs=[spec_out])

    @api.get("/v2/models/{name}/ready", responses=oip_responses(404, 503))
    @api.get("/v2/models/{name}/versions/{version}/ready", responses=oip_responses(404, 503))
    async def oip_model_ready(self, name: str, version: str | None = None):
        _, error = self._oip_model(name, version)
        if error is not None:
            return error
        not_ready = await self._ready()  # type: ignore[attr-defined]
        return not_ready if not_ready is not None else {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer", openapi_extra=INFER_BODY, responses=oip_responses(400, 401, 403, 404, 413, 503))
    @api.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY,
              responses=oip_responses(400, 401, 403, 404, 413, 503))
    async def oip_infer(self, name: str, request: Request, authorization: Authorization = None, version: str | None = None):
        self.auth.check(authorization, "read")
        model, error = self._oip_model(name, version)
        if error is not None:
            return error
        _, _, spec_in, spec_out = model
        try:
            infer, raws = oip.parse_infer_request(await request.body(), request.headers.get(oip.HEADER_LENGTH))
            if len(infer.inputs) != 1:
                raise oip.TensorError(f"inputs: {name} takes exactly one input ({spec_in.name!r}), "
                                      f"got {len(infer.inputs)}")
            for i, wanted in enumerate(infer.outputs or []):
                if wanted.name != spec_out.name:
                    raise oip.TensorError(f"outputs[{i}].name: unknown output {wanted.name!r}; {name} returns "
                                          f"{spec_out.name!r}")
            tensor = oip.decode(infer.inputs[0], 0, spec_in, raws[0])
        except oip.TensorError as exc:
            return oip_error(400, str(exc))
        try:
            label, result = await self._infer(name, tensor)
        except RankerUnavailable as exc:
            return oip_error(503, str(exc), headers={"Retry-After": "1"})
        body, headers = oip.encode_infer_response(infer, {spec_out.name: np.asarray(result, np.float32)},
                                                  model_name=name, model_version=label.rsplit(":v", 1)[1])
        return Response(content=body, headers={**headers, "x-model-version": label})

    async def _infer(self, model: str, features: np.ndarray) -> tuple[str, np.ndarray]:
        """A served model on an already-encoded batch: ``ranker`` → scores [N], ``retriever`` → embeddings."""
        if model == "ranker":
            ranker = self.core.ranker
            return ranker.model_version, await self._rank(ranker, features)  # type: ignore[attr-defined]
        retriever = self.core.retrieval.retriever
        assert retriever is not None  # _oip_model checked the name
        return retriever.model_version, retriever.session.run(None, {"user_features": features})[0]


def document_oip(app: Any) -> None:
    """Put the OIP request models into ``app``'s OpenAPI components (the infer routes read raw bodies), and the
    bearer scheme on the routes that take a token."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            document_security(schema)
            defs = oip.InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["InferenceRequest"] = defs
            app.openapi_schema = exact_int64(schema)
        return app.openapi_schema

    app.openapi = openapi
