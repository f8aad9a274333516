"""The daemon's work, callable in-process without sockets: refine crops, manage models, jobs.

``RefinerService`` owns a model folder (``<models>/<name>.pt``, written by the refiner's
export), keeps up to ``max_loaded_models`` refiners in memory (least recently used goes
first), refines batches of crops with a named model, and runs training jobs through a
``JobManager``. Failures are ``ServiceError``s carrying an ``ErrorReply`` code and a hint, so
the server can pass them on unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import JOB_KINDS, Capabilities, JobInfo
from refiner_daemon.serve.jobs import JobError, JobManager, Trainer

MODEL_SUFFIX = ".pt"


def _valid_model_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


class ServiceError(Exception):
    """A request the service cannot serve; ``code`` is one of ``protocol.errors.ERROR_CODES``."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" + (f" (hint: {self.hint})" if self.hint else "")


class RefinerModel(Protocol):
    """What the service needs from a loaded refiner (``refiner_daemon.refiner.inference.Refiner``)."""

    name: str
    sha256: str
    device: str

    def refine(self, crops: np.ndarray) -> Any:  # -> object with .images and .attention
        ...


ModelLoader = Callable[[Path, str], RefinerModel]


def load_refiner(path: Path, device: str) -> RefinerModel:
    """The default loader: ``Refiner.load`` (imports torch only when a model is loaded)."""
    from refiner_daemon.refiner.inference import Refiner

    return Refiner.load(path, device=device)


def resolve_device_name(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is present, else ``cpu``."""
    if device != "auto":
        return device
    from refiner_daemon.common.devices import resolve_device  # late: keeps torch out of imports

    return resolve_device("auto").type


@dataclass(frozen=True)
class ServiceConfig:
    """Where models and job state live, and what the service may use.

    models_dir: folder of ``<name>.pt`` refiner files. state_dir: job records and default run
    folders. allowed_roots: folders a job config may name paths in (besides state_dir).
    """

    models_dir: str
    state_dir: str
    device: str = "auto"
    allowed_roots: tuple[str, ...] = ()
    max_loaded_models: int = 4

    def __post_init__(self) -> None:
        for name in ("models_dir", "state_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"ServiceConfig.{name} must be a non-empty path")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"ServiceConfig.device must be auto, cpu, cuda or cuda:N, "
                             f"got {self.device!r}")
        if not isinstance(self.max_loaded_models, int) or self.max_loaded_models < 1:
            raise ValueError("ServiceConfig.max_loaded_models must be an int >= 1")
        object.__setattr__(self, "allowed_roots", tuple(str(r) for r in self.allowed_roots))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Refined:
    """The result of one refine call."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    attention: np.ndarray | None  # float32 (N, H, W) or None
    model: str
    model_sha256: str


class RefinerService:
    """Models, refinement and jobs; no sockets. Safe to call from several threads."""

    def __init__(self, config: ServiceConfig, *, model_loader: ModelLoader = load_refiner,
                 trainers: dict[str, Trainer] | None = None, limits: Limits = DEFAULT_LIMITS
                 ) -> None:
        self.config = config
        self.limits = limits
        self.models_dir = Path(config.models_dir)
        if not self.models_dir.is_dir():
            raise ServiceError("bad_config", f"model folder {self.models_dir} does not exist",
                               "create it and put exported refiners (<name>.pt) in it")
        self.device = (resolve_device_name(config.device) if model_loader is load_refiner
                       else config.device)
        self._load_model = model_loader
        self._models: collections.OrderedDict[str, RefinerModel] = collections.OrderedDict()
        self._model_lock = threading.Lock()
        self.jobs = JobManager(config.state_dir, allowed_roots=config.allowed_roots,
                               trainers=trainers)

    # ---- models
    def available_models(self) -> list[str]:
        """Names of the ``.pt`` files in the model folder."""
        return sorted(p.stem for p in self.models_dir.glob(f"*{MODEL_SUFFIX}") if p.is_file())

    def loaded_models(self) -> list[str]:
        with self._model_lock:
            return list(self._models)

    def load_model(self, name: str) -> RefinerModel:
        """Load ``<models>/<name>.pt`` (or return it if loaded); evicts the least recently used."""
        with self._model_lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
                return model
        if not _valid_model_name(name):
            raise ServiceError("unknown_model", f"invalid model name {name!r}",
                               "use a file name from the model folder, without .pt")
        path = self.models_dir / f"{name}{MODEL_SUFFIX}"
        if not path.is_file():
            raise ServiceError("unknown_model", f"no model {name!r} in {self.models_dir}",
                               f"available: {self.available_models()}")
        try:
            model = self._load_model(path, self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ServiceError("internal", f"cannot load model {name!r}: {exc}",
                               "re-export the model with the refiner's export") from None
        with self._model_lock:
            self._models[name] = model
            self._models.move_to_end(name)
            while len(self._models) > self.config.max_loaded_models:
                self._models.popitem(last=False)
        return model

    def unload_model(self, name: str) -> bool:
        """Forget a loaded model; returns whether it was loaded."""
        with self._model_lock:
            return self._models.pop(name, None) is not None

    # ---- refinement
    def refine(self, model: str, crops: np.ndarray) -> Refined:
        """Refine uint8 (N, H, W, 3) crops with the named model."""
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4 \
                or crops.shape[-1] != 3:
            raise ServiceError("bad_config", "crops must be a uint8 array of shape (N, H, W, 3)")
        refiner = self.load_model(model)
        try:
            output = refiner.refine(crops)
        except (ValueError, TypeError) as exc:  # the model refused these crops (e.g. too small)
            raise ServiceError("bad_config", f"model {model!r} cannot refine crops {crops.shape}: "
                               f"{exc}", "send crops of the size the model was trained for"
                               ) from None
        except RuntimeError as exc:  # a failure inside the model (e.g. out of GPU memory)
            raise ServiceError("internal", f"model {model!r} failed on crops {crops.shape}: {exc}",
                               "check the daemon's log; smaller batches may help") from None
        images = np.asarray(output.images)
        if images.shape != crops.shape or images.dtype != np.uint8:
            raise ServiceError("internal", f"model {model!r} returned {images.dtype} "
                               f"{images.shape} for crops {crops.shape}")
        attention = output.attention
        if attention is not None:
            attention = np.ascontiguousarray(attention, dtype=np.float32)
        return Refined(images, attention, model, refiner.sha256)

    # ---- jobs
    def start_job(self, kind: str, config: dict[str, Any], request_id: str = "") -> JobInfo:
        """Queue a training job. A ``train_refiner`` config may add ``"publish_as": NAME``: on
        success the exported refiner is copied to ``<models>/NAME.pt``, ready to serve."""
        config = dict(config)
        publish_as = config.pop("publish_as", None)
        publish_to = None
        if publish_as is not None:
            if kind != "train_refiner":
                raise ServiceError("bad_config", f"publish_as only applies to train_refiner jobs, "
                                   f"not {kind}")
            if not isinstance(publish_as, str) or not _valid_model_name(publish_as):
                raise ServiceError("bad_config", f"publish_as {publish_as!r} is not a valid model "
                                   "name", "use letters, digits, '_', '-' or '.', no '/'")
            publish_to = self.models_dir / f"{publish_as}{MODEL_SUFFIX}"
        return self._jobs_call(self.jobs.start, kind, config, request_id, publish_to)

    def job(self, job_id: str) -> JobInfo:
        return self._jobs_call(self.jobs.get, job_id)

    def cancel_job(self, job_id: str) -> JobInfo:
        return self._jobs_call(self.jobs.cancel, job_id)

    def list_jobs(self) -> list[JobInfo]:
        return self.jobs.list()

    def job_events(self, job_id: str, after_seq: int) -> list[tuple[int, str, dict[str, Any]]]:
        return self._jobs_call(self.jobs.events_since, job_id, after_seq)

    @staticmethod
    def _jobs_call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except JobError as exc:
            raise ServiceError(exc.code, exc.message, exc.hint) from None

    # ---- description
    def capabilities(self) -> Capabilities:
        return Capabilities(device=self.device, models=tuple(self.available_models()),
                            loaded_models=tuple(self.loaded_models()),
                            job_kinds=tuple(k for k in JOB_KINDS if k in self.jobs.trainers),
                            limits=self.limits.to_dict())

    def close(self) -> None:
        self.jobs.close()
        with self._model_lock:
            self._models.clear()
