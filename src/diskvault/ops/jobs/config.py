"""A job's configuration: where it lives, its TOML file, and the checks on what ``job add`` is given.

A job is one flat TOML file, ``CONFIG_DIR/NAME.toml`` (read with ``tomllib``; written by
``to_toml`` below: the file is small and flat, strings, integers, booleans and lists of
strings, so a writer of our own is ~20 lines and no TOML writer becomes a dependency).
Directories (``Scope``): system-wide (root) ``/etc/diskvault/jobs`` and state in
``/var/lib/diskvault/jobs``; ``--user``: platformdirs' user config and state directories
(``~/.config/diskvault/jobs``, ``~/.local/state/diskvault/jobs``). ``DISKVAULT_JOBS_DIR``
overrides both: configs in it, state in its ``state/`` folder. The passphrase is never
stored, only where it comes from (a file or a command).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from ...errors import UsageError
from ...rawnames import is_raw
from .files import write_file

JOBS_DIR_ENV = "DISKVAULT_JOBS_DIR"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Scope:
    """Where a scope's jobs live: ``user`` is False for system-wide jobs (root)."""

    user: bool
    config_dir: str
    state_dir: str

    @classmethod
    def of(cls, user: bool) -> Scope:
        """The directories of system-wide (``user`` False) or the calling user's jobs;
        ``DISKVAULT_JOBS_DIR`` overrides them."""
        override = os.environ.get(JOBS_DIR_ENV)
        if override:
            root = os.path.abspath(override)
            return cls(user, root, os.path.join(root, "state"))
        if not user:
            return cls(False, "/etc/diskvault/jobs", "/var/lib/diskvault/jobs")
        import platformdirs

        return cls(True, os.path.join(platformdirs.user_config_dir("diskvault"), "jobs"),
                   os.path.join(platformdirs.user_state_dir("diskvault"), "jobs"))

    def config_path(self, name: str) -> str:
        return os.path.join(self.config_dir, f"{name}.toml")

    def names(self) -> list[str]:
        """The names of the jobs configured in this scope, sorted."""
        try:
            files = os.listdir(self.config_dir)
        except FileNotFoundError:
            return []
        return sorted(f[:-5] for f in files if f.endswith(".toml") and _NAME.match(f[:-5]))


@dataclass
class Job:
    """One job: what ``job add`` was given. ``keep_*`` counts are forget's (0: rule unset,
    -1: unlimited); ``check_subset`` is a percentage (``"10%"``)."""

    name: str
    repository: str
    source: str
    on_calendar: str = "daily"
    randomized_delay: str = "15min"
    tags: list[str] = field(default_factory=list)
    allow_mounted: bool = False
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str = ""
    keep_tag: list[str] = field(default_factory=list)
    check_subset: str = "10%"
    password_file: str = ""
    password_command: str = ""
    on_failure: str = ""
    on_success: str = ""
    created: str = ""  # ISO 8601, UTC

    def keep_args(self) -> list[str]:
        """The job's retention rules as ``diskvault forget`` options (empty: no rule)."""
        args: list[str] = []
        for rule in KEEP_COUNTS:
            n = getattr(self, f"keep_{rule}")
            if n:
                args += [f"--keep-{rule}", str(n)]
        if self.keep_within:
            args += ["--keep-within", self.keep_within]
        for t in self.keep_tag:
            args += ["--keep-tag", t]
        return args

    def slices(self) -> int:
        """How many fixed slices ``check_subset`` splits the packs into: ceil(100 / P), so
        each run reads at most P% and that many runs read every pack once."""
        return math.ceil(100 / float(_PERCENT.match(self.check_subset).group(1)))

    def to_json(self) -> dict:
        return asdict(self)


def check_name(name: str) -> str:
    """``name`` when it is a safe systemd unit instance name; raises UsageError (exit 2)."""
    if not _NAME.match(name):
        raise UsageError(f"job name {name!r} is not a safe unit name: use 1 to 64 letters, digits, - and _, "
                         "starting with a letter or digit (e.g. nightly)")
    return name


def check_subset(spec: str) -> str:
    """``spec`` when it is a percentage above 0 and at most 100; raises UsageError."""
    m = _PERCENT.match(spec.strip())
    if not m or not 0 < float(m.group(1)) <= 100:
        raise UsageError(f"--check-subset {spec!r}: give a percentage above 0% and at most 100% (e.g. 10%)")
    return spec.strip()


_OPTION = {"tags": "tag", "repository": "repo"}  # a field's option, where their names differ


def new_job(**values: object) -> Job:
    """A Job from ``job add``'s values, checked (UsageError) and with paths made absolute."""
    job = Job(**values, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    check_name(job.name)
    check_subset(job.check_subset)
    for option, value in (("--repo", job.repository), ("--source", job.source)):
        if not value.strip():  # abspath("") would be the current folder
            raise UsageError(f"{option} is empty: give a path")
    if job.source == "-":
        raise UsageError("--source -: a job has no standard input to read: give an image file or a block device")
    job.repository = os.path.abspath(job.repository)
    job.source = os.path.abspath(job.source)
    if job.password_file:
        job.password_file = os.path.abspath(job.password_file)
    if job.password_file and job.password_command:
        raise UsageError("--password-file and --password-command both given: give one passphrase source")
    for f in fields(job):
        value = getattr(job, f.name)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and is_raw(text):
                raise UsageError(f"--{_OPTION.get(f.name, f.name).replace('_', '-')} is not UTF-8 text: give it in UTF-8 (a job file is "
                                 "UTF-8 TOML)")
            if isinstance(text, str) and any(ord(c) < 32 or c == "\x7f" for c in text):
                raise UsageError(f"--{_OPTION.get(f.name, f.name).replace('_', '-')} holds a control character (a newline, a tab): "
                                 "give it on one line, without tabs")
    return job


def config_file(scope: Scope, name: str) -> str:
    """The path of job ``name``'s file; raises UsageError for a bad name or an unknown job."""
    check_name(name)
    path = scope.config_path(name)
    if not os.path.isfile(path):
        where = "--user " if scope.user else ""
        raise UsageError(f"no job {name!r} in {scope.config_dir}: see diskvault job list {where}"
                         f"(or add it with diskvault job add {where}{name} ...)")
    return path


_TYPES = {"str": (str, "text"), "int": (int, "an integer"), "bool": (bool, "true or false"),
          "list[str]": (list, "a list of texts")}


def load(scope: Scope, name: str) -> Job:
    """The job ``name`` of ``scope``; raises UsageError for an unknown job or a file that
    is not a job's (not TOML, a value of the wrong type, another job's name, a bad
    check subset or creation time: a hand-edited file is checked as ``job add`` checks)."""
    path = config_file(scope, name)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"job file {path} is not valid TOML ({exc}): fix it, or replace the job "
                         f"(diskvault job add --force {name} ...)") from None
    known = {f.name: f for f in fields(Job)}
    try:
        missing = [k for k in ("name", "repository", "source") if k not in data]
        if missing:
            raise UsageError(f"no {' or '.join(missing)}")
        for key, value in data.items():
            want, what = _TYPES[known[key].type] if key in known else (object, "")
            if (not isinstance(value, want) or (want is int and isinstance(value, bool))
                    or (want is list and not all(isinstance(v, str) for v in value))):
                raise UsageError(f"{key} = {value!r} is not {what}")
        job = Job(**{k: v for k, v in data.items() if k in known})
        if job.name != name:
            raise UsageError(f"it names the job {job.name!r}")
        check_subset(job.check_subset)
        if job.created:
            datetime.fromisoformat(job.created)
    except (TypeError, ValueError, UsageError) as exc:
        raise UsageError(f"job file {path} is not a job's ({exc}): replace the job "
                         f"(diskvault job add --force {name} ...)") from None
    return job


def save(scope: Scope, job: Job, force: bool) -> None:
    """Write ``job``'s file (crash-safe); raises UsageError when it exists and not ``force``."""
    path = scope.config_path(job.name)
    if os.path.exists(path) and not force:
        raise UsageError(f"job {job.name!r} exists ({path}): remove it first (diskvault job remove "
                         f"{job.name}) or replace it (--force)")
    write_file(path, to_toml(job).encode(), mode=0o600)


def to_toml(job: Job) -> str:
    """``job`` as a flat TOML document (``tomllib`` reads back an equal Job)."""
    lines = [f"# diskvault job {job.name}: written by diskvault job add (--force replaces it)"]
    for key, value in asdict(job).items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
