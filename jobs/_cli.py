"""Shared command line of the jobs: the ``main()`` wrapper every ``jobs/*.py`` uses, and the
``--config FILE`` + dotted overrides + scaling flags of the training jobs.

``run_job(fn, argv)`` is the one place where errors meet the user: a ``UserError`` (bad config,
bad data, finished run, failed training, ...) and a clear infrastructure cause wrapped by Ray
(an unreachable S3 endpoint) print one line ``error: ...`` on stderr and exit 2; anything else is
a bug and keeps its traceback. ``--debug`` (any job) prints the full traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from pipeline.config import ConfigError, dump_yaml, load_config
from pipeline.errors import UserError, describe, is_ray_wrapper, root_user_error, unreachable_endpoint

EXIT_USER = 2


def user_message(exc: BaseException) -> Optional[str]:
    """The one line for a user-fixable ``exc`` (possibly wrapped by Ray), else None (a bug)."""
    root = root_user_error(exc)
    is_user = isinstance(exc, UserError) and not is_ray_wrapper(exc)
    if not is_user:
        return describe(exc) if root is not None or unreachable_endpoint(exc) else None
    text = str(exc).strip()
    top = text.splitlines()[0].strip() if text else type(exc).__name__
    if root is exc and "\n" not in text:
        return top  # already one line naming its cause
    cause = describe(exc)  # a deeper UserError, an unreachable endpoint, or the inner exception
    return top if cause in top else f"{top.rstrip(':')}: {cause}"


@contextlib.contextmanager
def _argparse_errors_as_config_errors() -> Iterator[None]:
    """argparse prints its usage block and exits 2; inside a job its errors are one line too."""
    def error(self: argparse.ArgumentParser, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see --help)")

    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = saved  # type: ignore[method-assign]


def run_job(fn: Callable[[list[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a job's ``fn(argv) -> exit status`` with the project's error contract (module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PIPELINE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        with _argparse_errors_as_config_errors():
            return fn(args)
    except KeyboardInterrupt:
        print("interrupted (re-run the same command to continue)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
        msg = user_message(e)
        if msg is None:
            raise  # a bug: the traceback is the report
        if debug:
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USER


def in_ray_job() -> bool:
    """True inside a ``ray job submit`` entrypoint (or a Ray worker under ``--working-dir``)."""
    cwd = os.getcwd().replace(os.sep, "/")
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "/runtime_resources/working_dir_files/" in cwd


def check_persistent(flag: str, path: str) -> None:
    """Under ``ray job submit`` a relative output path would land in Ray's temporary copy of the
    working dir (``.../runtime_resources/working_dir_files/_ray_pkg_*``), which Ray deletes and
    where the next command cannot find it: refuse it, naming the flag and what to pass."""
    if not path or "://" in path or os.path.isabs(path) or not in_ray_job():
        return
    raise ConfigError(
        f"{flag}={path} is a relative path and this job runs under `ray job submit`, whose working "
        f"dir ({os.getcwd()}) is a temporary copy Ray deletes: pass an absolute path on storage "
        f"every node sees (e.g. {flag}=/shared/{path.lstrip('./')}) or s3://bucket/{path.lstrip('./')}")


def reject_unknown(extra: Sequence[str], prog: str, allowed: tuple[str, ...] = ()) -> None:
    """ConfigError naming the first argument in ``extra`` that is not an allowed override."""
    for a in extra:
        if not (a.startswith(tuple(f"--{p}." for p in allowed)) and "=" in a):
            hint = (f"; overrides look like {' / '.join(f'--{p}.key=value' for p in allowed)}"
                    if allowed else "")
            raise ConfigError(f"{prog}: unrecognised argument {a!r}{hint} (see --help)")


def parse_training_job(cls: type, argv: list[str], *, prog: str, description: str, config_help: str,
                       value_flags: tuple[tuple[str, str, str], ...] = ()) -> Any:
    """Parse ``argv`` into a validated ``cls`` config.

    ``value_flags``: (flag, dotted key, help) shortcuts such as ``("--test-manifest",
    "test.manifest", ...)``. ``--num-workers`` / ``--use-gpu`` map to ``scaling.*``;
    ``--print-config`` prints the resolved config and exits. Anything else must look like
    ``--section.key=value`` (a ConfigError names what does not).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", help=config_help)
    for flag, _, help_text in value_flags:
        p.add_argument(flag, help=help_text)
    p.add_argument("--num-workers", type=int, help="Ray Train workers (0 = in-process local mode)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="full tracebacks on errors")
    args, overrides = p.parse_known_args(argv)
    for flag, key, _ in value_flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value:
            overrides.append(f"--{key}={value}")
    if args.num_workers is not None:
        overrides.append(f"--scaling.num_workers={args.num_workers}")
    if args.use_gpu:
        overrides.append("--scaling.use_gpu=true")
    bad = [o for o in overrides if not o.startswith("--") or "=" not in o]
    if bad:
        raise ConfigError(f"unrecognised argument(s) {bad}: overrides look like --section.key=value")
    cfg = load_config(cls, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg))
        sys.exit(0)
    return cfg
