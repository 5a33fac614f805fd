"""Training data from the service's own event log, streamed to Parquet.

Every scored message was logged with its feature vector exactly as the model saw it
(`scored_messages.features`). What happened next decides its label, strongest first:

1. an admin verdict on the message (`spam` or `ham`);
2. a complaint (spam), or a reply or `not_spam` report (ham);
3. the account's fate: an account confirmed compromised at time T (a `compromised`
   verdict, a lock by a person, or an automatic lock with no `clean` verdict since)
   makes its spam-like messages (p >= `compromise_min_probability`) in the
   `lookback_s` before T spam; a `clean` verdict within the label delay of an
   automatic lock makes the account's messages in the `lookback_s` before that lock
   ham (a false lock, the most valuable correction); a `clean` verdict later than
   that may follow a clean-up as well as a mistake, so it labels nothing;
4. otherwise a message that was accepted (recipients could have objected), from an
   account with no lock, compromise or spam verdict within `lookback_s`, is ham,
   weighted `implicit_ham_weight`: nobody objected to it. (A complaint labels only the
   message it is about: legitimate bulk mail draws some.)

Only what was known at `as_of` counts: later verdicts, feedback and locks are ignored.

A message is labelled only once its feedback window has closed (`label_delay_s` before
`as_of`, the log's own newest time by default, so a replayed log labels the same way).
Rows are split by time: the oldest share trains, the next validates (early stopping,
calibration), the newest tests. Rows are read and written in chunks, so memory stays
bounded whatever the log's size.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.spec import FEATURE_NAMES, FEATURE_SPEC_VERSION

SPLITS = ("train", "validation", "test")
DATASET_FILE = "events.parquet"
CHUNK_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class LabelPolicy:
    label_delay_s: float = 2 * 86_400.0
    lookback_s: float = 86_400.0
    compromise_min_probability: float = 0.5
    # Below 1 trusts silence less, but tilts the model against high-volume senders: spam labels
    # come from bursts, so lowering it taught a model to lock newsletters (docs/retraining.md).
    implicit_ham_weight: float = 1.0
    split_shares: tuple[float, float, float] = (0.7, 0.15, 0.15)


@dataclass(slots=True)
class _Periods:
    """An account's confirmed compromises and cleared false locks, as sorted times."""

    compromised: list[float] = field(default_factory=list)
    cleared: list[float] = field(default_factory=list)  # automatic locks a `clean` verdict undid
    flagged: list[float] = field(default_factory=list)  # any lock or compromise, confirmed or not

    @staticmethod
    def _near(times: list[float], ts: float, before: float, after: float) -> bool:
        i = bisect.bisect_left(times, ts - after)
        return i < len(times) and times[i] <= ts + before

    def compromised_soon_after(self, ts: float, lookback: float) -> bool:
        return self._near(self.compromised, ts, lookback, 0.0)

    def cleared_soon_after(self, ts: float, lookback: float) -> bool:
        return self._near(self.cleared, ts, lookback, 0.0)

    def flagged_near(self, ts: float, lookback: float) -> bool:
        return self._near(self.flagged, ts, lookback, lookback)


@dataclass(slots=True)
class DatasetSummary:
    path: Path
    as_of: float
    rows: dict[str, int]
    spam: dict[str, int]
    by_source: dict[str, int]
    skipped_other_spec: int
    unlabelled: int
    split_times: tuple[float, float]


def _account_periods(connection: sqlite3.Connection, policy: LabelPolicy, as_of: float) -> dict[tuple, _Periods]:
    """Per (relay, account): when it was confirmed compromised, when a false lock was cleared, when flagged."""
    events: dict[tuple, list[tuple[float, str]]] = defaultdict(list)
    for relay, account, ts, actor in connection.execute(
        "SELECT relay, account, ts, actor FROM audit_log "
        "WHERE action IN ('locked', 'locked_temporary') AND ts <= ? ORDER BY ts",
        (as_of,),
    ):
        events[(relay, account)].append((ts, "auto_lock" if actor == "outguard" else "admin_lock"))
    for relay, account, ts, label in connection.execute(
        "SELECT relay, account, ts, label FROM labels WHERE target = 'account' AND ts <= ? ORDER BY ts", (as_of,)
    ):
        events[(relay, account)].append((ts, label))
    # An admin calling one of its messages spam: its other mail is not silently ham. A
    # complaint is not enough: legitimate bulk mail draws about one per thousand recipients,
    # and leaving a newsletter's whole send unlabelled teaches the model that volume is spam.
    for relay, account, ts in connection.execute(
        "SELECT relay, account, ts FROM labels WHERE target = 'message' AND label = 'spam' "
        "AND account IS NOT NULL AND ts <= ?",
        (as_of,),
    ):
        events[(relay, account)].append((ts, "objection"))
    periods: dict[tuple, _Periods] = {}
    for key, items in events.items():
        items.sort()
        found = periods.setdefault(key, _Periods())
        for i, (ts, kind) in enumerate(items):
            if kind == "objection":
                found.flagged.append(ts)
            elif kind in ("compromised", "admin_lock"):
                found.compromised.append(ts)
                found.flagged.append(ts)
            elif kind == "auto_lock":
                found.flagged.append(ts)
                window_end = ts + policy.label_delay_s
                cleans = [t for t, k in items[i + 1 :] if k == "clean"]
                if any(t <= window_end for t in cleans):
                    found.cleared.append(ts)  # undone soon: a false lock
                elif not cleans and window_end <= as_of:
                    found.compromised.append(ts)
                # A `clean` long after may follow a clean-up as well as a mistake: neither.
        found.flagged.sort()
    return periods


_ROWS = """
SELECT s.id, s.ts, s.relay, s.account, s.message_id, s.feature_spec_version, s.features, s.spam_probability,
    s.action,
    (SELECT l.label FROM labels l WHERE l.target = 'message' AND l.message_id = s.message_id AND l.ts <= :as_of
        ORDER BY l.ts DESC LIMIT 1) AS verdict,
    coalesce(f.complaints, 0) AS complaints, coalesce(f.ham_signals, 0) AS ham_signals
FROM scored_messages s
LEFT JOIN (
    SELECT message_id, relay, sum(type = 'complaint') AS complaints,
        sum(type IN ('reply', 'not_spam')) AS ham_signals
    FROM feedback_events WHERE matched = 1 AND message_id IS NOT NULL AND ts <= :as_of GROUP BY message_id, relay
) f ON f.message_id = s.message_id AND f.relay = s.relay
WHERE s.features IS NOT NULL AND s.ts <= :cutoff
ORDER BY s.ts, s.id
"""


def label_for(row: sqlite3.Row, periods: _Periods | None, policy: LabelPolicy) -> tuple[int, float, str] | None:
    """(label, weight, source) for one logged message, or None while nothing is known."""
    if row["verdict"] in ("spam", "ham"):
        return (1 if row["verdict"] == "spam" else 0), 1.0, "verdict"
    if row["complaints"] > 0:
        return 1, 1.0, "complaint"
    if row["ham_signals"] > 0:
        return 0, 1.0, "reply"
    ts, probability = row["ts"], row["spam_probability"] or 0.0
    if periods is not None:
        if periods.compromised_soon_after(ts, policy.lookback_s):
            return (1, 1.0, "compromised") if probability >= policy.compromise_min_probability else None
        if periods.cleared_soon_after(ts, policy.lookback_s):
            return 0, 1.0, "cleared"
        if periods.flagged_near(ts, policy.lookback_s):
            return None
    if row["action"] != "accept":
        return None  # held, deferred or rejected: no recipient could have objected
    return 0, policy.implicit_ham_weight, "implicit"


# What each row says about its message, ahead of the feature columns.
_META = (
    pa.field("id", pa.int64()),
    pa.field("ts", pa.float64()),
    pa.field("relay", pa.string()),
    pa.field("account", pa.string()),
    pa.field("spam_probability", pa.float32()),
    pa.field("label", pa.int8()),
    pa.field("weight", pa.float32()),
    pa.field("label_source", pa.string()),
    pa.field("split", pa.string()),
)


def _schema() -> pa.Schema:
    return pa.schema([*_META, *(pa.field(name, pa.float32()) for name in FEATURE_NAMES)])


def _read_only(database: Path) -> contextlib.closing[sqlite3.Connection]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    return contextlib.closing(connection)


def _newest(database: Path) -> float:
    with _read_only(database) as connection:
        return connection.execute("SELECT max(ts) FROM scored_messages").fetchone()[0] or 0.0


def _split_times(databases: list[Path], cutoff: float, shares: tuple[float, float, float]) -> tuple[float, float]:
    """Times that cut every log's eligible messages, taken together, into the split shares (oldest first)."""
    times = []
    for database in databases:
        with _read_only(database) as connection:
            found = connection.execute(
                "SELECT ts FROM scored_messages WHERE features IS NOT NULL AND ts <= ?", (cutoff,)
            ).fetchall()
        times.append(np.fromiter((t for (t,) in found), dtype=np.float64, count=len(found)))
    every = np.sort(np.concatenate(times)) if times else np.zeros(0)
    if not every.size:
        return cutoff, cutoff
    first = every[min(int(every.size * shares[0]), every.size - 1)]
    second = every[min(int(every.size * (shares[0] + shares[1])), every.size - 1)]
    return float(first), float(second)


@dataclass(slots=True)
class _Tally:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    spam: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    by_source: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: int = 0
    unlabelled: int = 0


def _labelled_table(
    chunk: list[sqlite3.Row],
    periods: dict[tuple, _Periods],
    policy: LabelPolicy,
    split_times: tuple[float, float],
    tally: _Tally,
) -> pa.Table | None:
    """One chunk of logged messages as dataset rows: the labelled ones, with their split."""
    meta: dict[str, list] = {column.name: [] for column in _META}
    vectors = []
    for row in chunk:
        if row["feature_spec_version"] != FEATURE_SPEC_VERSION:
            tally.skipped += 1
            continue
        labelled = label_for(row, periods.get((row["relay"], row["account"])), policy)
        if labelled is None:
            tally.unlabelled += 1
            continue
        label, weight, source = labelled
        split = SPLITS[bisect.bisect_right(split_times, row["ts"])]
        values = (row["id"], row["ts"], row["relay"], row["account"], row["spam_probability"])
        for column, value in zip(meta, (*values, label, weight, source, split), strict=True):
            meta[column].append(value)
        vectors.append(orjson.loads(row["features"]))
        tally.rows[split] += 1
        tally.spam[split] += label
        tally.by_source[source] += 1
    if not vectors:
        return None
    matrix = np.asarray(vectors, dtype=np.float32)
    columns: dict[str, object] = {**meta, **{name: matrix[:, i] for i, name in enumerate(FEATURE_NAMES)}}
    return pa.Table.from_pydict(columns, schema=_schema())


def build_event_dataset(
    databases: list[Path], out_dir: Path, policy: LabelPolicy = LabelPolicy(), as_of: float | None = None
) -> DatasetSummary:
    """Stream the labelled messages of one or more event logs into `out_dir/events.parquet`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DATASET_FILE
    tally = _Tally()
    # One clock for all the logs: the newest message of any, unless given.
    as_of = as_of if as_of is not None else max((_newest(d) for d in databases), default=0.0)
    cutoff = as_of - policy.label_delay_s
    split_times = _split_times(databases, cutoff, policy.split_shares)
    with pq.ParquetWriter(path, _schema(), compression="zstd") as writer:
        for database in databases:
            with _read_only(database) as connection:
                periods = _account_periods(connection, policy, as_of)
                cursor = connection.execute(_ROWS, {"as_of": as_of, "cutoff": cutoff})
                for chunk in _chunks(cursor):
                    if (table := _labelled_table(chunk, periods, policy, split_times, tally)) is not None:
                        writer.write_table(table)
    return DatasetSummary(
        path=path,
        as_of=as_of,
        rows=tally.rows,
        spam=tally.spam,
        by_source=dict(tally.by_source),
        skipped_other_spec=tally.skipped,
        unlabelled=tally.unlabelled,
        split_times=split_times,
    )


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[sqlite3.Row]]:
    while chunk := cursor.fetchmany(CHUNK_ROWS):
        yield chunk


@dataclass(slots=True)
class EventSplit:
    """One split held in memory for training: the model's input and what it learns from."""

    rows: np.ndarray  # (n, len(FEATURE_NAMES)) float32, spec order
    labels: np.ndarray
    weights: np.ndarray
    ts: np.ndarray


def _read(path: Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one split (only `columns`), read a row group at a time."""
    parquet = pq.ParquetFile(path)
    wanted = None if columns is None else sorted({*columns, "split"})
    parts = []
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=wanted)
        parts.append(table.filter(pc.equal(table["split"], split)))
    return pa.concat_tables(parts) if parts else _schema().empty_table()


def read_labels(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's labels and weights only: what class weights and checks need, without the rows."""
    table = _read(path, split, ["label", "weight"])
    labels = table["label"].to_numpy(zero_copy_only=False).astype(np.int8)
    return labels, table["weight"].to_numpy(zero_copy_only=False).astype(np.float32)


def read_split(path: Path, split: str) -> EventSplit:
    """One split of a dataset file, in memory (the feature columns, labels, weights and times)."""
    table = _read(path, split, ["label", "weight", "ts", *FEATURE_NAMES])
    rows = (
        np.column_stack([table[name].to_numpy(zero_copy_only=False) for name in FEATURE_NAMES]).astype(
            np.float32, copy=False
        )
        if table.num_rows
        else np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    )
    return EventSplit(
        rows=rows,
        labels=table["label"].to_numpy(zero_copy_only=False).astype(np.int8),
        weights=table["weight"].to_numpy(zero_copy_only=False).astype(np.float32),
        ts=table["ts"].to_numpy(zero_copy_only=False),
    )
