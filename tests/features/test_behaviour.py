"""Rolling windows, the account's own baseline, distinct IPs and new destinations."""

from __future__ import annotations

import math

from features.behaviour import DecayedRate, Observation, behaviour_features
from service.stores.memory import AccountWindows

T0 = 1_800_000_000.0


def obs(t: float, rcpts: tuple[str, ...] = ("example.org",), ip: str | None = "203.0.113.1") -> Observation:
    return Observation(timestamp=t, recipients=len(rcpts), recipient_domains=rcpts, client_ip=ip)


def test_windows_count_messages_and_recipients_by_message_time() -> None:
    windows = AccountWindows()
    for i in range(10):
        snap = windows.observe(obs(T0 + i * 600, rcpts=("a.org", "b.org")))  # one every 10 minutes
    assert snap.msgs_24h == 10
    assert snap.rcpts_24h == 20
    assert snap.msgs_1h in (6, 7)  # bucketed: 59-60 minutes
    assert snap.msgs_1m == 1


def test_a_burst_shows_against_the_accounts_baseline() -> None:
    windows = AccountWindows()
    for day in range(7):  # a week of two messages an hour
        for hour in range(24):
            for k in range(2):
                windows.observe(obs(T0 + day * 86_400 + hour * 3_600 + k * 1_000))
    calm = behaviour_features(windows.observe(obs(T0 + 7 * 86_400)))
    burst_start = T0 + 7 * 86_400 + 1_800
    for k in range(200):
        snap = windows.observe(obs(burst_start + k * 5, ip=f"198.51.100.{k % 50}"))
    burst = behaviour_features(snap)
    assert abs(calm["acct_rate_vs_baseline"]) < 1.0
    assert burst["acct_rate_vs_baseline"] > math.log(50)
    assert burst["acct_client_ips_1h"] == 51  # 50 new IPs and the usual one
    assert burst["acct_msgs_1m"] >= 12


def test_new_recipient_domains_share() -> None:
    windows = AccountWindows()
    windows.observe(obs(T0, rcpts=("friends.org", "work.com")))
    snap = windows.observe(obs(T0 + 60, rcpts=("friends.org", "never-seen.net")))
    assert snap.new_rcpt_domain_share == 0.5


def test_replay_is_deterministic_and_late_messages_do_not_erase_history() -> None:
    stream = [obs(T0 + s) for s in (0, 30, 3_000, 2_900, 4_000, 180_000, 89_000)]
    first = [AccountWindows() for _ in range(2)]
    runs = [[w.observe(o) for o in stream] for w in first]
    assert runs[0] == runs[1]
    late, after = runs[0][3], runs[0][4]
    assert late.msgs_1h == 3  # +2900 counts +0, +30 and itself, not the later +3000
    assert (after.msgs_1h, after.msgs_24h) == (3, 5)  # +4000: the late +2900 counts; +0 and +30 left the hour
    assert runs[0][6].msgs_24h == 1  # +89000 is older than the newest window: it counts only itself


def test_baseline_needs_an_hour_of_history() -> None:
    rate = DecayedRate()
    rate.add(T0)
    assert rate.rate_per_hour(T0 + 60) is None
    for k in range(1, 48):
        rate.add(T0 + k * 1_800)  # two an hour for a day
    assert 1.5 < rate.rate_per_hour(T0 + 48 * 1_800) < 2.5


def test_no_account_context_gives_neutral_values() -> None:
    assert set(behaviour_features(None).values()) == {0.0}
