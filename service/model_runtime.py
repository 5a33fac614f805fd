"""The models the service serves: the one that acts, an optional shadow, and swapping them live.

The acting bundle comes from `OUTGUARD_MODEL_DIR` or, with `OUTGUARD_MODEL_SOURCE=registry`,
from the MLflow registry's `champion` (downloaded once per version under the state
folder). `reload` loads the new bundle in a worker thread and swaps it in with one
assignment: a request that has started keeps the bundle it read, the next one gets
the new one, and a bundle that fails to load (another feature spec, a broken file)
leaves the old one serving. With `OUTGUARD_MODEL_POLL_S`, a background task watches the
registry and reloads when the champion changes.

The shadow (`OUTGUARD_SHADOW_MODEL`: a registry alias or a bundle directory) scores the
same rows; its probability is logged next to the acting one and never acted on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.bundle import BUNDLE_FILE, BundleError, ModelBundle, load_bundle
from models.registry import RegistryError
from service.errors import OutguardError

if TYPE_CHECKING:
    from models.registry import ModelRegistry, RegisteredBundle
    from service.metrics import Metrics
    from service.settings import Settings

log = logging.getLogger(__name__)


class ModelNotLoaded(OutguardError):
    status = 409
    code = "model_not_loaded"


@dataclass(frozen=True, slots=True)
class LoadedBundle:
    bundle: ModelBundle
    source: str  # a directory, or `registry:<name>/<version>`
    directory: Path  # where its files (and model card) are
    registry_version: str | None = None


class ModelHolder:
    """The bundles in use. Swapping `primary` is one assignment; a request keeps the bundle it started with."""

    def __init__(self, primary: LoadedBundle, shadow: LoadedBundle | None = None) -> None:
        self.primary = primary
        self.shadow_loaded = shadow

    @property
    def current(self) -> ModelBundle:
        return self.primary.bundle

    @property
    def shadow(self) -> ModelBundle | None:
        return self.shadow_loaded.bundle if self.shadow_loaded else None

    def describe(self) -> dict[str, object]:
        return {
            "model_version": self.current.version,
            "feature_spec_version": self.current.feature_spec_version,
            "source": self.primary.source,
            "registry_version": self.primary.registry_version,
            "shadow_version": self.shadow.version if self.shadow else None,
            "shadow_source": self.shadow_loaded.source if self.shadow_loaded else None,
        }


def publish(metrics: Metrics, bundle: ModelBundle) -> None:
    """`outguard_model_info` names the bundle serving now, and only it."""
    metrics.model_info.clear()
    metrics.model_info.labels(bundle.version, bundle.feature_spec_version).set(1)


class ModelManager:
    """Loads bundles from where the settings say, and swaps them into a `ModelHolder`."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._registry: ModelRegistry | None = None
        self._lock = asyncio.Lock()

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = self.settings.model_registry()
        return self._registry

    # -- loading (blocking: at start-up, or in a worker thread)

    def _from_registry(self, entry: RegisteredBundle) -> LoadedBundle:
        cache = self.settings.state_dir / "models" / f"{self.settings.registry_model_name}-v{entry.version}"
        if not (cache / BUNDLE_FILE).is_file():
            cache.parent.mkdir(parents=True, exist_ok=True)
            self.registry.download(entry, cache)
        source = f"registry:{self.settings.registry_model_name}/{entry.version}"
        return LoadedBundle(load_bundle(cache), source, cache, entry.version)

    def load_primary(self) -> LoadedBundle:
        if self.settings.model_source == "registry":
            from models.registry import CHAMPION

            entry = self.registry.by_alias(CHAMPION)
            if entry is not None:
                return self._from_registry(entry)
            log.warning("the registry has no champion yet: serving %s", self.settings.model_dir)
        return LoadedBundle(load_bundle(self.settings.model_dir), str(self.settings.model_dir), self.settings.model_dir)

    def load_shadow_or_none(self) -> LoadedBundle | None:
        """The shadow, or None with a warning: a shadow that cannot be loaded must never stop the acting model."""
        if not self.settings.shadow_model:
            return None
        from mlflow.exceptions import MlflowException  # imported late: MLflow is slow to import

        try:
            return self.load_shadow()
        except (BundleError, RegistryError, OSError, MlflowException) as error:
            log.warning("no shadow model: %s", error)
            return None

    def load_shadow(self) -> LoadedBundle | None:
        name = self.settings.shadow_model
        if not name:
            return None
        path = Path(name)
        if (path / BUNDLE_FILE).is_file():
            return LoadedBundle(load_bundle(path), str(path), path)
        entry = self.registry.by_alias(name)
        if entry is None:
            raise BundleError(f"shadow model {name!r} is neither a bundle directory nor a registry alias")
        return self._from_registry(entry)

    def champion_version(self) -> str | None:
        from models.registry import CHAMPION

        entry = self.registry.by_alias(CHAMPION)
        return entry.version if entry else None

    # -- swapping (async: from the API or the poller)

    async def reload(self, holder: ModelHolder) -> dict[str, object]:
        """Load the acting model afresh and swap it in (the old one serves if loading fails); then the shadow."""
        from mlflow.exceptions import MlflowException  # imported late: MLflow is slow to import

        async with self._lock:
            previous = holder.current.version
            try:
                primary = await asyncio.to_thread(self.load_primary)
            except (BundleError, RegistryError, OSError, MlflowException) as error:
                raise ModelNotLoaded(f"{error}; still serving {previous}") from error
            holder.primary = primary
            if self.metrics is not None:
                publish(self.metrics, primary.bundle)
            holder.shadow_loaded = await asyncio.to_thread(self.load_shadow_or_none)
            if primary.bundle.version != previous:
                log.info("model reloaded: %s -> %s (%s)", previous, primary.bundle.version, primary.source)
            return {**holder.describe(), "previous_version": previous, "changed": primary.bundle.version != previous}

    async def poll(self, holder: ModelHolder, interval_s: float) -> None:
        """Reload whenever the registry's champion is not the version being served."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                version = await asyncio.to_thread(self.champion_version)
                if version is not None and version != holder.primary.registry_version:
                    await self.reload(holder)
            except Exception:  # the registry may be down for a while: keep serving, try again
                log.exception("model registry poll failed")
