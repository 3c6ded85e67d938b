"""The one base class of errors a user can fix (bad config, bad data, a run that is finished).

Jobs catch ``UserError`` and exit 2 with its one-line message (no traceback unless ``--debug``);
anything else is a bug and keeps its traceback. Each subclass also derives from the builtin
that callers already catch (``ValueError`` / ``RuntimeError``).
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["UserError", "describe", "root_user_error", "is_ray_wrapper", "unreachable_endpoint",
           "walk_causes"]


class UserError(Exception):
    """An error whose message tells the user what to change; jobs print it and exit 2."""


# ----------------------------------------------------------------------------------------------
# Root causes: Ray wraps a worker's exception several times (RayTaskError inside a Ray Data task,
# WorkerGroupError.worker_failures, ControllerError.controller_failure, __cause__ chains). These
# helpers walk all of them by attribute name, so this module needs no Ray import.
# ----------------------------------------------------------------------------------------------

_UNREACHABLE = ("couldn't connect", "could not connect", "connection refused", "curlcode: 7",
                "curlcode: 6", "could not resolve", "couldn't resolve", "network_connection",
                "failed to connect", "connect timed out", "connection timed out")


def _children(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
    if isinstance(cause, BaseException):
        out.append(cause)
    wf = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError
    if isinstance(wf, dict):
        out.extend(v for _, v in sorted(wf.items(), key=lambda kv: str(kv[0])) if isinstance(v, BaseException))
    cf = getattr(exc, "controller_failure", None)  # ray.train.ControllerError
    if isinstance(cf, BaseException):
        out.append(cf)
    if exc.__cause__ is not None:
        out.append(exc.__cause__)
    elif exc.__context__ is not None and not exc.__suppress_context__:  # not after "from None"
        out.append(exc.__context__)
    return out


def is_ray_wrapper(exc: BaseException) -> bool:
    """A Ray wrapper that only *looks* like its cause (RayTaskError(DataError) subclasses both)."""
    return isinstance(getattr(exc, "cause", None), BaseException) and hasattr(exc, "traceback_str")


def walk_causes(exc: BaseException, limit: int = 64) -> list[BaseException]:
    """``exc`` and every exception it wraps, breadth first, each once."""
    seen, order, queue = set(), [], [exc]
    while queue and len(order) < limit:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        order.append(e)
        queue.extend(_children(e))
    return order


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def unreachable_endpoint(exc: BaseException, s3_endpoint: Optional[str] = None) -> Optional[str]:
    """"S3 endpoint <url> unreachable (...)" if a wrapped cause is a failed connection, else None."""
    for e in walk_causes(exc):
        if is_ray_wrapper(e):
            continue
        low = str(e).lower()
        if any(w in low for w in _UNREACHABLE):
            url = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") \
                or "(AWS default)"
            return f"S3 endpoint {url} unreachable ({_first_line(str(e))[:200]})"
    return None


def root_user_error(exc: BaseException) -> Optional[BaseException]:
    """The innermost UserError that ``exc`` wraps (``exc`` itself if it is one and wraps none)."""
    found = None
    for e in walk_causes(exc):
        if isinstance(e, UserError) and not is_ray_wrapper(e):
            found = e
    return found


def describe(exc: BaseException, s3_endpoint: Optional[str] = None) -> str:
    """One line naming the real cause of ``exc``: the innermost UserError, an unreachable S3
    endpoint, or else the innermost non-wrapper exception as ``Type: first line``."""
    user = root_user_error(exc)
    if user is not None and user is not exc:
        return _first_line(str(user))
    net = unreachable_endpoint(exc, s3_endpoint)
    if net:
        return net
    if user is not None:
        return _first_line(str(user))
    inner = [e for e in walk_causes(exc) if not is_ray_wrapper(e)
             and type(e).__name__ not in ("WorkerGroupError", "ControllerError", "TrainingFailedError")]
    e = inner[-1] if inner else exc
    return f"{type(e).__name__}: {_first_line(str(e))}"
