"""``instaseg serve``: one loaded model behind an HTTP API, a page to drop images on and a dataset review.

* :class:`ModelService` (:mod:`.service`): the model, its categories and the bounded inference gate;
* :class:`DatasetReview` (:mod:`.review`): a dataset's predictions computed once in the background,
  its images ranked by error;
* :func:`create_app` (:mod:`.app`): the FastAPI application; :mod:`.uploads` turns request bodies
  into pixels or 4xx answers; :mod:`.schemas` describes the JSON (OpenAPI);
* :func:`run_server` (:mod:`.server`): uvicorn on a host and port, loopback unless told otherwise.

A floor between ``hub`` (which builds the model) and ``cli``. It needs the ``serve`` extra
(``pip install 'instaseg[serve]'``: FastAPI, uvicorn, python-multipart).
"""

from instaseg.serve.app import Limits, create_app
from instaseg.serve.review import DatasetReview, image_errors
from instaseg.serve.server import is_loopback, run_server
from instaseg.serve.service import InferenceGate, ModelService, ServerBusy, instances_to_json

__all__ = ["DatasetReview", "InferenceGate", "Limits", "ModelService", "ServerBusy", "create_app", "image_errors",
           "instances_to_json", "is_loopback", "run_server"]
