"""Serving from the registry: new champions without a restart, broken ones refused, a shadow alongside."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.bundle import BUNDLE_FILE, DEFAULT_BUNDLE_DIR
from models.registry import ModelRegistry
from service.app import create_app
from service.settings import Settings
from service.stores.events import read_scored
from tests.conftest import make_raw
from tests.fingerprints.test_fingerprint import MINUTES, OFFER
from training.pipeline import current_champion


def bundle_copy(where: Path, version: str, **changes: object) -> Path:
    """The shipped bundle under another version name, with `changes` to its bundle.json."""
    shutil.copytree(DEFAULT_BUNDLE_DIR, where)
    meta = json.loads((where / BUNDLE_FILE).read_text())
    meta.update(version=version, **changes)
    (where / BUNDLE_FILE).write_text(json.dumps(meta))
    return where


def register(registry: ModelRegistry, bundle_dir: Path, version: str) -> str:
    run_id = registry.log_run(run_name=version, bundle_dir=bundle_dir, params={}, metrics={}, artifacts=[])
    return registry.register(run_id, version).version


@pytest.fixture
def served(settings: Settings) -> Settings:
    """Settings that serve the registry's champion: the shipped bundle, registered as version 1."""
    registry_settings = settings.model_copy(update={"model_source": "registry"})
    current_champion(registry_settings.model_registry(), registry_settings, settings.state_dir)
    return registry_settings


def score(client: TestClient, n: int, body: str = OFFER) -> dict:
    answer = client.post(
        "/v1/score", json={"message_id": f"<m{n}@x>", "account": f"user{n}", "raw": make_raw(body=body)}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_new_champion_is_served_after_a_reload_without_a_restart(served: Settings, tmp_path: Path) -> None:
    registry = served.model_registry()
    with TestClient(create_app(served)) as client:
        first = score(client, 1)["model_version"]
        assert client.get("/v1/admin/models").json()["registry_version"] == "1"
        registry.promote(register(registry, bundle_copy(tmp_path / "b", "copy-2"), "copy-2"))
        assert score(client, 2)["model_version"] == first  # nothing changes until asked
        reloaded = client.post("/v1/admin/models/reload").json()
        assert (reloaded["previous_version"], reloaded["model_version"], reloaded["changed"]) == (first, "copy-2", True)
        assert score(client, 3)["model_version"] == "copy-2"
        assert 'outguard_model_info{feature_spec="3",version="copy-2"} 1.0' in client.get("/metrics").text


def test_a_champion_for_another_feature_spec_is_refused_and_the_old_one_keeps_serving(
    served: Settings, tmp_path: Path
) -> None:
    registry = served.model_registry()
    with TestClient(create_app(served)) as client:
        before = score(client, 1)["model_version"]
        broken = bundle_copy(tmp_path / "b", "old-spec", feature_spec_version="2")
        registry.promote(register(registry, broken, "old-spec"))
        refused = client.post("/v1/admin/models/reload")
        assert refused.status_code == 409
        assert refused.json()["error"] == "model_not_loaded"
        assert "feature spec '2'" in refused.json()["detail"] and f"still serving {before}" in refused.json()["detail"]
        assert score(client, 2)["model_version"] == before


def test_the_service_notices_a_new_champion_by_itself(served: Settings, tmp_path: Path) -> None:
    registry = served.model_registry()
    polling = served.model_copy(update={"model_poll_s": 0.05})
    with TestClient(create_app(polling)) as client:
        registry.promote(register(registry, bundle_copy(tmp_path / "b", "copy-3"), "copy-3"))
        deadline = time.monotonic() + 30
        while client.get("/v1/admin/models").json()["model_version"] != "copy-3":
            assert time.monotonic() < deadline, "the new champion was never picked up"
            time.sleep(0.05)
        assert score(client, 1)["model_version"] == "copy-3"
        assert 'version="copy-3"' in client.get("/metrics").text


def test_a_shadow_scores_the_same_traffic_and_never_acts(settings: Settings, tmp_path: Path) -> None:
    # The same trees, calibrated twice as steeply: another opinion about every message.
    meta = json.loads((DEFAULT_BUNDLE_DIR / BUNDLE_FILE).read_text())
    steeper = {**meta["calibration"], "slope": 2 * meta["calibration"]["slope"]}
    shadow = bundle_copy(tmp_path / "shadow", "steeper", calibration=steeper)
    alone, shadowed = [], []
    for answers, extra in ((alone, {}), (shadowed, {"shadow_model": str(shadow)})):
        run = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / f'{len(extra)}.db'}", **extra})
        with TestClient(create_app(run)) as client:
            for n in range(6):
                answers.append(score(client, n, OFFER if n % 2 else MINUTES))
            asyncio.run(client.app.state.container.events.flush())
            report = client.get("/v1/admin/models/shadow").json()
    assert [(a["spam_probability"], a["action"]) for a in alone] == [
        (a["spam_probability"], a["action"]) for a in shadowed
    ]
    logged = list(read_scored(Path(run.database_url.removeprefix("sqlite:///"))))
    assert {r["shadow_model_version"] for r in logged} == {"steeper"}
    assert all(r["shadow_probability"] != r["spam_probability"] for r in logged)
    [pair] = report["pairs"]
    assert (pair["shadow_model"], pair["messages"]) == ("steeper", 6)
    assert pair["mean_abs_difference"] > 0


def test_a_shadow_that_cannot_load_never_holds_back_the_acting_model(served: Settings, tmp_path: Path) -> None:
    registry = served.model_registry()
    missing_shadow = served.model_copy(update={"shadow_model": "challenger"})  # no such alias yet
    with TestClient(create_app(missing_shadow)) as client:
        assert client.get("/v1/admin/models").json()["shadow_version"] is None
        registry.promote(register(registry, bundle_copy(tmp_path / "b", "copy-4"), "copy-4"))
        reloaded = client.post("/v1/admin/models/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert (reloaded.json()["model_version"], reloaded.json()["shadow_version"]) == ("copy-4", None)
