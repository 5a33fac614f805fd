"""Training past one machine: LightGBM's Dask interface (`outguard train --engine dask`).

The workers read the training split from the Parquet dataset themselves, so the
client never holds it. LightGBM's Dask estimators take no early-stopping callback, so
the booster grows `max_rounds` trees and the round count with the lowest validation
loss is chosen afterwards, on the client, from the (small) validation split: the same
choice early stopping makes, at the cost of the extra rounds.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
from sklearn.metrics import log_loss

from features.spec import FEATURE_INDEX
from training.events import EventSplit

if TYPE_CHECKING:
    from training.train_events import EventTrainConfig

LOCAL_WORKERS = 2


@contextlib.contextmanager
def dask_client(scheduler: str | None) -> Iterator[Any]:
    """A client of the scheduler at `scheduler`, or of a LocalCluster started (and stopped) here."""
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def best_round(booster: lgb.Booster, validation: EventSplit, features: tuple[str, ...], rounds: int) -> int:
    """The round count, on a grid of about 100 steps, with the lowest weighted validation log loss."""
    columns = np.array([FEATURE_INDEX[name] for name in features], dtype=np.intp)
    x = validation.rows[:, columns]
    step = max(1, rounds // 100)
    grid = sorted({*range(step, rounds + 1, step), rounds})
    losses = [
        log_loss(
            validation.labels, booster.predict(x, num_iteration=k), sample_weight=validation.weights, labels=[0, 1]
        )
        for k in grid
    ]
    return grid[int(np.argmin(losses))]


def fit_on_dask(
    params: dict[str, Any],
    dataset: Path,
    validation: EventSplit,
    config: EventTrainConfig,
    features: tuple[str, ...],
) -> tuple[lgb.Booster, int]:
    import dask.dataframe as dd

    # LightGBM's Dask interface sets each worker's threads from the cluster itself.
    params = {k: v for k, v in params.items() if k not in ("num_threads", "n_jobs")}
    with dask_client(config.scheduler) as client:
        # The workers open the file themselves: on a real cluster it must be on storage they share.
        frame = dd.read_parquet(
            str(dataset.resolve()), columns=[*features, "label", "weight"], filters=[("split", "==", "train")]
        )
        workers = max(1, len(client.scheduler_info()["workers"]))
        if frame.npartitions < workers:
            frame = frame.repartition(npartitions=workers)
        frame = frame.persist()
        x = frame[list(features)].to_dask_array(lengths=True)
        y = frame["label"].to_dask_array(lengths=True)
        w = frame["weight"].to_dask_array(lengths=True)
        model = lgb.DaskLGBMClassifier(client=client, n_estimators=config.max_rounds, **params)
        with warnings.catch_warnings():
            # The estimator's own n_jobs default; the Dask interface sets threads per worker.
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(x, y, sample_weight=w, feature_name=list(features))
        booster = model.booster_
    return booster, best_round(booster, validation, features, config.max_rounds)
