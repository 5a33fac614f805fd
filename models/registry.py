"""MLflow tracking and the model registry: every training run, its versions, and who is champion.

Every run logs its parameters, message- and account-level metrics, the feature
importance plot, the model card and the bundle itself. Each bundle is registered as a
version of one registered model; the alias `champion` names the version the service
serves, `challenger` the newest candidate, and `previous-champion` what `rollback`
returns to. Default store: SQLite under the state folder; any MLflow server by URI.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle import BUNDLE_FILE

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
BUNDLE_ARTIFACT = "bundle"

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """The registry lacks what was asked for (no champion, no such version)."""


@dataclass(frozen=True, slots=True)
class RegisteredBundle:
    version: str  # the registry's version number
    bundle_version: str  # the bundle's own version string
    source: str
    run_id: str | None
    aliases: tuple[str, ...]


class ModelRegistry:
    def __init__(self, tracking_uri: str, model_name: str, experiment: str, artifact_root: Path | None = None):
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment = experiment
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id

    # -- runs

    def log_run(
        self,
        *,
        run_name: str,
        bundle_dir: Path,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: list[Path],
        tags: dict[str, str] | None = None,
    ) -> str:
        """One MLflow run with everything about a trained bundle; its id."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
        run_id = run.info.run_id
        try:
            self.client.log_batch(
                run_id,
                params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())],
                metrics=[Metric(k, float(v), 0, 0) for k, v in sorted(metrics.items()) if v is not None],
            )
            self.client.log_artifacts(run_id, str(bundle_dir), artifact_path=BUNDLE_ARTIFACT)
            for path in artifacts:
                self.client.log_artifact(run_id, str(path))
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id)
        return run_id

    def register(self, run_id: str, bundle_version: str) -> RegisteredBundle:
        """A new registered version of the run's bundle, tagged with the bundle's own version."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # it exists
            self.client.create_registered_model(self.model_name)
        run = self.client.get_run(run_id)
        source = f"{run.info.artifact_uri}/{BUNDLE_ARTIFACT}"
        created = self.client.create_model_version(
            self.model_name, source=source, run_id=run_id, tags={"bundle_version": bundle_version}
        )
        return self._describe(created)

    # -- aliases

    def _describe(self, version: Any) -> RegisteredBundle:
        return RegisteredBundle(
            version=str(version.version),
            bundle_version=version.tags.get("bundle_version", ""),
            source=version.source,
            run_id=version.run_id,
            aliases=tuple(getattr(version, "aliases", ()) or ()),
        )

    def by_alias(self, alias: str) -> RegisteredBundle | None:
        """The version the alias names; None when the alias or the model does not exist (other errors raise)."""
        from mlflow.exceptions import MlflowException

        try:
            return self._describe(self.client.get_model_version_by_alias(self.model_name, alias))
        except MlflowException as error:
            # A missing alias comes back as INVALID_PARAMETER_VALUE, a missing model as RESOURCE_DOES_NOT_EXIST.
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in str(error):
                return None
            raise

    def get(self, version: str) -> RegisteredBundle:
        from mlflow.exceptions import MlflowException

        try:
            return self._describe(self.client.get_model_version(self.model_name, version))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(f"no version {version} of registered model {self.model_name!r}") from exc

    def versions(self) -> list[RegisteredBundle]:
        """Every registered version, newest first."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        # Searching leaves the aliases out; reading each version brings them.
        return sorted((self.get(str(v.version)) for v in found), key=lambda e: -int(e.version))

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, version)

    def promote(self, version: str) -> RegisteredBundle:
        """Make `version` champion; the champion it replaces becomes `previous-champion`."""
        target = self.get(version)
        current = self.by_alias(CHAMPION)
        if current is not None and current.version != target.version:
            self.set_alias(PREVIOUS, current.version)
        self.set_alias(CHAMPION, target.version)
        return self.get(version)

    def rollback(self) -> RegisteredBundle:
        """Make `previous-champion` champion again (and the rolled-back one `previous-champion`)."""
        previous = self.by_alias(PREVIOUS)
        if previous is None:
            raise RegistryError("no previous champion to roll back to")
        return self.promote(previous.version)

    # -- bundles

    def download(self, entry: RegisteredBundle, destination: Path) -> Path:
        """The version's bundle directory at `destination`, which appears whole or not at all."""
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=destination.parent))
        try:
            fetched = Path(
                self._mlflow.artifacts.download_artifacts(
                    artifact_uri=entry.source, dst_path=str(staging), tracking_uri=self.tracking_uri
                )
            )
            if not (fetched / BUNDLE_FILE).is_file():
                raise RegistryError(f"version {entry.version} at {entry.source} holds no {BUNDLE_FILE}")
            if destination.exists():  # a version's bundle never changes: a finished copy is as good
                return destination
            try:
                fetched.rename(destination)
            except OSError:
                if not (destination / BUNDLE_FILE).is_file():  # not another process that got there first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return destination
