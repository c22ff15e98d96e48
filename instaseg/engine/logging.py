"""Training logs: a console/file logger, ``metrics.jsonl`` (+ optional TensorBoard), a progress bar.

Only the main process writes: the loop creates these with ``enabled=is_main_process()``.

``metrics.jsonl`` holds one JSON object per line. Training lines::

    {"iteration": 20, "lr": 0.0199, "losses": {"loss_cls": 0.41, ...}, "total_loss": 1.2,
     "time": 0.083, "data_time": 0.004, "skipped_steps": 0}

where ``iteration`` counts completed iterations, losses are means over the iterations since the
previous line (non-finite, skipped steps excluded), ``time`` and ``data_time`` are seconds per
iteration (whole iteration; waiting for data). Evaluation lines: ``{"iteration": 500,
"eval": {"bbox": {...}, "segm": {...}}}``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["get_logger", "setup_logger", "teardown_logger", "MetricsWriter", "LossMeter", "progress_bar",
           "format_losses"]

_LOGGER_NAME = "instaseg"


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so log lines do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never break training
            self.handleError(record)


def get_logger() -> logging.Logger:
    """The ``instaseg`` logger (configured by :func:`setup_logger`)."""
    return logging.getLogger(_LOGGER_NAME)


def setup_logger(out_dir: str | Path | None, enabled: bool = True) -> logging.Logger:
    """The ``instaseg`` logger with a console handler and, with ``out_dir``, ``out_dir/log.txt``.

    Calling it again (a second run in one process) replaces the handlers it added before.
    When not ``enabled`` (non-main ranks) only warnings and errors reach the console.
    """
    teardown_logger()
    logger = logging.getLogger(_LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = _TqdmHandler()
    console.setLevel(logging.INFO if enabled else logging.WARNING)
    console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    handlers: list[logging.Handler] = [console]
    if out_dir is not None and enabled:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(out_dir) / "log.txt")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s] %(message)s"))
        handlers.append(file_handler)
    for handler in handlers:
        handler._instaseg_engine = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger


def teardown_logger() -> None:
    """Remove (and close) the handlers :func:`setup_logger` added."""
    logger = logging.getLogger(_LOGGER_NAME)
    for handler in [h for h in logger.handlers if getattr(h, "_instaseg_engine", False)]:
        logger.removeHandler(handler)
        handler.close()


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None (strict JSON has no NaN); nested dicts and lists converted."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends JSON lines to ``path``; mirrors scalars to TensorBoard when it is installed.

    TensorBoard is optional: when ``torch.utils.tensorboard`` does not import, only the JSON lines
    are written, and the logger says so once, when the writer is made (the start of training). ``truncate_after(iteration)`` (used when resuming) drops lines of iterations
    that the resumed run will redo, so the file never holds one iteration twice.
    """

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard_dir: str | Path | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                get_logger().info(f"TensorBoard is not installed (pip install tensorboard): metrics go to "
                                  f"{self.path.name} only")
                return
            except Exception as error:  # noqa: BLE001 - a broken install must not stop training
                get_logger().warning(f"TensorBoard is unavailable ({type(error).__name__}: {error}): metrics go "
                                     f"to {self.path.name} only")
                return
            self._tb = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, iteration: int) -> None:
        """Keep only lines whose ``iteration`` is <= ``iteration`` (and lines that do not parse out)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line).get("iteration", 0)) > iteration:
                    continue
            except (ValueError, AttributeError, TypeError):
                continue  # a line torn by a crash: drop it
            kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``iteration``); numbers go to TensorBoard by flat name."""
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        if self._tb is not None:
            step = int(record["iteration"])
            for name, value in _flatten(record).items():
                if name != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


class LossMeter:
    """Running means of named losses and timings between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._time = 0.0
        self._data_time = 0.0
        self._iters = 0

    def add_losses(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def add_time(self, seconds: float, data_seconds: float) -> None:
        self._time += seconds
        self._data_time += data_seconds
        self._iters += 1

    def means(self) -> dict[str, float]:
        return {name: total / self._count for name, total in self._sums.items()} if self._count else {}

    def seconds_per_iteration(self) -> tuple[float, float]:
        n = max(self._iters, 1)
        return self._time / n, self._data_time / n


def format_losses(losses: dict[str, float], max_terms: int = 8) -> str:
    """``"cls 0.412 box 0.233 ... total 1.2"`` (names without ``loss_`` / ``_loss``) for the progress bar."""
    items = list(losses.items())[:max_terms]
    return " ".join(f"{name.removeprefix('loss_').removesuffix('_loss')} {value:.3f}" for name, value in items)


class _NullBar:
    """Stands in for tqdm on non-main ranks or with progress off."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> Any:
    """A tqdm bar (ETA, it/s, postfix for losses) or a silent stand-in when not ``enabled``."""
    if not enabled:
        return _NullBar()
    return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, smoothing=0.05,
                file=sys.stderr)
