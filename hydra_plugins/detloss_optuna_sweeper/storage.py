"""Where a study lives, and how a job finds its trial there.

Storage specs (``hydra.sweeper.storage``):

- ``null``: ``sqlite:///<sweep dir>/optuna.db`` (one process, or several on one machine);
- a database URL that SQLAlchemy reads (``sqlite:///relative.db``, ``sqlite:////absolute.db``,
  ``postgresql://user@host/db``, ``mysql+pymysql://...``): Optuna's ``RDBStorage``;
- ``journal:///path/to/optuna.log`` (everything after ``journal://`` is the path: ``journal:///abs/file.log`` is
  absolute, ``journal://file.log`` relative) or ``{journal: path, lock: open | symlink}``: Optuna's
  ``JournalStorage`` on a ``JournalFileBackend``, an append-only file that processes on many machines share through
  a network file system. ``lock`` picks Optuna's file lock (``symlink``, Optuna's default, or ``open`` where the
  file system has no symbolic links).

A relative path is made absolute in the sweeper's working directory, so that jobs started elsewhere (SLURM) open
the same file.

The trial identity of a job is three environment variables set for the job alone through Hydra's
``hydra.job.env_set`` (any launcher, SLURM included, applies them where the job runs, and DDP ranks inherit
them): ``DETLOSS_OPTUNA_STORAGE`` (the normalised spec), ``DETLOSS_OPTUNA_STUDY`` and ``DETLOSS_OPTUNA_TRIAL``
(the trial number). The job reads them with :meth:`TrialIdentity.from_env` and opens its trial with
:meth:`TrialIdentity.open`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .search_space import quote

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ENV_STORAGE",
    "ENV_STUDY",
    "ENV_TRIAL",
    "PRUNER_ATTR",
    "HEARTBEAT_ATTR",
    "normalise_storage",
    "open_storage",
    "build_pruner",
    "TrialIdentity",
]

ENV_STORAGE = "DETLOSS_OPTUNA_STORAGE"
ENV_STUDY = "DETLOSS_OPTUNA_STUDY"
ENV_TRIAL = "DETLOSS_OPTUNA_TRIAL"
#: trial system attributes the sweeper writes: the pruner the job builds (its spec, JSON), and the heartbeat (unix
#: seconds) of the process that runs the trial
PRUNER_ATTR = "detloss:pruner"
HEARTBEAT_ATTR = "detloss:heartbeat"
_JOURNAL = "journal://"
_LOCKS = {"symlink": "JournalFileSymlinkLock", "open": "JournalFileOpenLock"}


def normalise_storage(spec: Any, sweep_dir: str | Path) -> str:
    """The storage spec as one string that any process can open: ``null`` becomes the SQLite file in
    ``sweep_dir``, relative file paths become absolute, ``{journal: path, lock: ...}`` becomes
    ``journal://<absolute path>`` (``?lock=open`` appended for the open lock).

    Raises:
        ValueError: naming ``hydra.sweeper.storage``, for a spec of another form.
    """
    if spec is None:
        return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"journal", "lock"}
        if "journal" not in spec or unknown:
            raise ValueError(
                "hydra.sweeper.storage: a mapping must be {journal: PATH} with an optional lock: open | symlink, "
                f"got keys {sorted(spec)}"
            )
        lock = spec.get("lock") or "symlink"
        if lock not in _LOCKS:
            raise ValueError(f"hydra.sweeper.storage.lock: one of {sorted(_LOCKS)}, got {lock!r}")
        path = Path(str(spec["journal"])).expanduser().resolve()
        return f"{_JOURNAL}{path}" + ("?lock=open" if lock == "open" else "")
    if not isinstance(spec, str) or "://" not in spec:
        raise ValueError(
            "hydra.sweeper.storage: null, a database URL (sqlite:///optuna.db, postgresql://...), "
            f"journal:///path/to/optuna.log or {{journal: PATH}}, got {spec!r}"
        )
    if spec.startswith(_JOURNAL):
        path, _, query = spec.removeprefix(_JOURNAL).partition("?")
        if query not in ("", "lock=open", "lock=symlink"):
            raise ValueError(f"hydra.sweeper.storage: a journal URL takes ?lock=open or ?lock=symlink, got ?{query}")
        return f"{_JOURNAL}{Path(path).expanduser().resolve()}" + ("?lock=open" if query == "lock=open" else "")
    if spec.startswith("sqlite:///"):
        path = spec.removeprefix("sqlite:///")
        if path and not path.startswith(("/", ":memory:")) and "?" not in path:
            return f"sqlite:///{Path(path).resolve()}"
    return spec


@functools.lru_cache(maxsize=8)
def open_storage(spec: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of a normalised spec (:func:`normalise_storage`). A journal's directory is created; a
    SQLite database waits up to 60 s for a lock that another process holds (SQLite's default is 5 s).

    One storage object per spec and process (both kinds are thread-safe): the jobs that the basic launcher runs in
    the sweeper's process share the sweeper's, instead of connecting (and checking the schema) once per trial."""
    import optuna
    from optuna.storages import journal

    if spec.startswith(_JOURNAL):
        path, _, query = spec.removeprefix(_JOURNAL).partition("?")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = getattr(journal, _LOCKS["open" if query == "lock=open" else "symlink"])(path)
        return optuna.storages.JournalStorage(journal.JournalFileBackend(path, lock_obj=lock))
    engine_kwargs = {}
    if spec.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
        database = spec.removeprefix("sqlite:///")
        if database and not database.startswith(":memory:"):
            Path(database.partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs)


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """The pruner of a spec: ``null`` or ``none`` (no pruning), a short name (``median``, ``successive_halving``,
    ``hyperband``) or a ``_target_`` mapping. Raises ``ValueError`` naming ``hydra.sweeper.pruner``."""
    from .config import PRUNERS

    return build(spec or "none", PRUNERS, "hydra.sweeper.pruner", "optuna.pruners.BasePruner")


def build(spec: Any, names: Mapping[str, str], key: str, base: str, **extra: Any) -> Any:
    """The object of a short name in ``names`` or of a ``_target_`` mapping (``extra`` passed to it), checked to
    be a ``base``; ``ValueError`` naming ``key`` otherwise."""
    from hydra.utils import get_class, instantiate

    if isinstance(spec, str):
        if spec not in names:
            raise ValueError(f"{key}: one of {sorted(names)} or a _target_ mapping, got {spec!r}")
        spec = {"_target_": names[spec]}
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(f"{key}: a short name ({', '.join(sorted(names))}) or a mapping with _target_, got {spec!r}")
    try:
        built = instantiate(dict(spec), **extra)
    except Exception as error:
        cause = error.__cause__ or error
        raise ValueError(f"{key}: {spec['_target_']} cannot be built from {dict(spec)}: {cause}") from error
    if not isinstance(built, get_class(base)):
        raise ValueError(f"{key}: {spec['_target_']} is not an {base}")
    return built


class TrialIdentity(NamedTuple):
    """Which trial of which study a job runs (see the module's docstring). A named tuple, not a dataclass: Hydra's
    plugin scan runs this module outside ``sys.modules``, where a dataclass cannot read its string annotations."""

    storage: str
    study_name: str
    number: int

    def overrides(self) -> list[str]:
        """The job overrides that hand the identity to the job (``hydra.job.env_set``)."""
        values = {ENV_STORAGE: self.storage, ENV_STUDY: self.study_name, ENV_TRIAL: str(self.number)}
        return [f"++hydra.job.env_set.{name}={quote(value)}" for name, value in values.items()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrialIdentity | None:
        """The identity that the sweeper set for this job, or ``None`` outside an Optuna trial."""
        environ = os.environ if environ is None else environ
        if ENV_TRIAL not in environ:
            return None
        missing = [name for name in (ENV_STORAGE, ENV_STUDY) if not environ.get(name)]
        if missing:
            raise ValueError(f"{ENV_TRIAL} is set but {', '.join(missing)} not: the trial cannot be found")
        return cls(environ[ENV_STORAGE], environ[ENV_STUDY], int(environ[ENV_TRIAL]))

    def open(self) -> optuna.trial.Trial:
        """The trial, in the study loaded from the storage with the pruner the sweeper gave it
        (:data:`PRUNER_ATTR`), so that ``trial.report`` and ``trial.should_prune`` work from any process."""
        import optuna

        storage = open_storage(self.storage)
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        pruner = build_pruner(storage.get_trial_system_attrs(trial_id).get(PRUNER_ATTR))
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
        return optuna.trial.Trial(study, trial_id)
