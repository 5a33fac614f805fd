"""The template rule, pure: repeats of one content are one piece of evidence, an account's normal counts only
as ham, a hijack of an established account counts every copy, and a new account needs corroboration to lock."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from features.content import content_features
from features.engagement import EngagementSnapshot, bad_outcomes, engagement_evidence
from features.fingerprint import Fingerprinter
from features.message import parse_raw
from service.decision import (
    Behaviour,
    DecisionPolicy,
    Standing,
    content_evidence,
    corroboration,
    counted_evidence,
    decide,
    is_established,
    lock_threshold_for,
    message_evidence,
    update_account,
)
from service.fingerprints.templates import MAX_TEMPLATES, TemplateMemory, compact_values
from service.stores import AccountState
from service.stores.redis_state import _decode_state, _encode_state
from tests.conftest import make_raw

POLICY = DecisionPolicy(hold_threshold=0.99, reject_threshold=0.999, lock_threshold=lock_threshold_for(0.5, 20.0))
DAY, MINUTES_3 = 86_400.0, 180.0
START = 1_790_000_000.0
QUIET = Behaviour(history_seconds=0.0, recipients_1h=1, recipient_domains_1h=1)
CUSTOMERS = ["Anna Berg", "Ben Okafor", "Carla Ruiz", "David Chen", "Emma Novak", "Farid Haddad", "Grace Lee"]
ITEMS = [("Organic coffee beans 1kg", 24.90), ("Ceramic pour-over dripper", 32.00), ("Paper filters x100", 6.50)]


BOUNCES = 3.0  # invalid recipients behind an engagement evidence of 5.5 nats


def order_confirmation(n: int) -> str:
    """One fill of a shop's order template: the customer, the order number, the items and the code differ.

    With its loud offer for the next purchase the shipped model calls it spam (over 0.99 a copy).
    """
    rng = random.Random(n)
    items = rng.sample(ITEMS, rng.randint(1, 3))
    lines = "".join(f"{rng.randint(1, 3)} x {name}  ${price:.2f}\n" for name, price in items)
    return make_raw(
        subject=f"Your order #{1000 + n} - claim your VIP discount!",
        body=(
            f"Hi {rng.choice(CUSTOMERS)},\n\nThank you for your order #{1000 + n}! As a VIP customer you get 20% OFF "
            f"your next purchase - use code VIP{1000 + n} at checkout. Limited time offer, act now!\n\n{lines}\n"
            f"FREE shipping! Click here to claim your discount: https://shop.brightwatercoffee.com/deals?c={1000 + n}"
            "\n\nBrightwater Coffee Roasters\n"
        ),
        sender="Brightwater Coffee <orders@brightwatercoffee.com>",
        to="customer@example.com",
    )


def values_of(raw: str):
    fingerprint = Fingerprinter().fingerprint(content_features(parse_raw(raw)).document)
    assert fingerprint is not None
    return compact_values(fingerprint)


SPAM_LIKE = message_evidence(0.993, 0.0, POLICY)  # a copy the model calls spam: 2.8 nats


def send(
    state: AccountState,
    raw: str,
    at: float,
    evidence: float,
    behaviour: Behaviour = QUIET,
    engagement: float = 0.0,
) -> tuple[bool, Standing]:
    """One message through the rule as scoring applies it; whether a lock is recommended after it."""
    established = is_established(behaviour.history_seconds, state.messages_scored, POLICY)
    # The engagement these tests give (5.5 nats) is three invalid recipients of twenty.
    corroborated = bool(corroboration(behaviour, engagement, POLICY, bad_outcomes=BOUNCES))
    counted, standing = content_evidence(
        state, values_of(raw), evidence, at, established=established, corroborated=corroborated, policy=POLICY
    )
    update_account(state, counted, at)
    decision = decide(0.993, state, POLICY, engagement, may_lock=established or corroborated)
    return decision.lock_recommended, standing


def test_a_new_shop_sending_its_template_40_times_is_one_piece_of_evidence() -> None:
    state = AccountState()
    results = [
        send(
            state,
            order_confirmation(n),
            START + n * MINUTES_3,
            SPAM_LIKE,
            dataclasses.replace(QUIET, history_seconds=n * MINUTES_3),
        )
        for n in range(40)
    ]
    assert not any(locked for locked, _ in results)
    assert results[0][1] is Standing.NEW_CONTENT
    assert {standing for _, standing in results[1:]} == {Standing.REPEAT}
    assert state.evidence == pytest.approx(SPAM_LIKE, abs=0.01)  # one copy's worth, not forty
    assert len(TemplateMemory.decode(state.templates)) == 1


def test_the_old_rule_would_have_locked_it_within_four_copies() -> None:
    state = AccountState()
    for n in range(4):
        update_account(state, SPAM_LIKE, START + n * MINUTES_3)
    assert decide(0.993, state, POLICY).lock_recommended


def test_an_established_account_starting_a_new_spam_template_is_locked_within_a_few_messages() -> None:
    state = AccountState()
    for n in range(12):  # two days of its own template, mostly scored as ham
        send(state, order_confirmation(n), START + n * 4 * 3_600, message_evidence(0.05, 0.0, POLICY))
    history = dataclasses.replace(QUIET, history_seconds=2 * DAY)
    at = START + 2 * DAY
    locked_after = next(
        n
        for n in range(1, 10)
        if send(state, make_raw(subject="You WON $5,000,000!!!", body=LOTTERY), at + n * 60, 3.3, history)[0]
    )
    assert locked_after <= 4
    # Its own old template is its normal: a copy that the model calls spam adds nothing.
    before = state.evidence
    assert send(state, order_confirmation(99), at + 3_600, 3.3, history)[1] is Standing.NORMAL
    assert state.evidence == before


LOTTERY = (
    "Dear Winner,\n\nCONGRATULATIONS!!! You have WON $5,000,000 in our international lottery. To claim your prize "
    "send your bank details and a processing fee of $450 to our agent today. Click here http://192.0.2.44/claim "
    "to get your money. 100% guaranteed, risk free, act now, limited time offer!!!\n"
)
# Five different spam messages (no two share a template); the shipped model scores each over 0.99.
DISTINCT_SPAM = [
    make_raw(subject="URGENT: Claim your $5,000,000 prize NOW!!!", body=LOTTERY, to="undisclosed-recipients:;"),
    make_raw(
        subject="Cheap V1agra and C1alis - 80% OFF today only!!!",
        body="Best online pharmacy! Buy Viagra, Cialis, Levitra without prescription. Lowest prices guaranteed, "
        "discreet worldwide shipping, 100% satisfaction. Order now at http://pharma-deals.example/buy and save "
        "BIG!!! Limited stock, act now!\n",
        sender="Pharmacy <deals@pharma-deals.example>",
        to="undisclosed-recipients:;",
    ),
    make_raw(
        subject="Turn $250 into $25,000 in 30 days GUARANTEED",
        body="Dear Friend,\n\nOur secret Bitcoin trading robot made members over $1,000,000 last month. Join FREE "
        "today and start earning instantly, no experience needed! Deposit just $250 and watch your money grow. "
        "Click here http://203.0.113.9/join to claim your spot before it is gone!!!\n\nRegards,\nCrypto Profit Team\n",
        sender="Crypto Profit <win@crypto-profit.example>",
        to="undisclosed-recipients:;",
    ),
    make_raw(
        subject="$500 FREE casino bonus waiting for you - play NOW!!!",
        body="WINNER ALERT! Your $500 free casino bonus is waiting. Play slots, poker and roulette at the #1 online "
        "casino, no deposit required! Double your money tonight, 100% guaranteed payouts. Click here "
        "http://lucky-spins.example/bonus?c=77 to claim your FREE spins before midnight!!!\n",
        sender="Lucky Spins <bonus@lucky-spins.example>",
        to="undisclosed-recipients:;",
    ),
    make_raw(
        subject="APPROVED: $50,000 loan, no credit check!!!",
        body="Congratulations! You have been pre-approved for a personal loan of up to $50,000 with NO credit check "
        "and the lowest rates. Get cash in your bank account within 24 hours. Apply online now at "
        "http://bit.ly/fastcash-now - offer expires tonight!!! Reply STOP to unsubscribe.\n",
        sender="Fast Cash <approve@fastcash.example>",
        to="undisclosed-recipients:;",
    ),
]


def test_counted_evidence_by_standing() -> None:
    assert counted_evidence(3.0, Standing.NEW_CONTENT) == 3.0
    assert counted_evidence(3.0, Standing.NEW_TEMPLATE, peak=3.0) == 3.0
    assert counted_evidence(3.0, Standing.NORMAL) == 0.0
    assert counted_evidence(-0.3, Standing.NORMAL) == -0.3  # the account's normal still counts as ham
    assert counted_evidence(3.0, Standing.REPEAT, peak=2.0) == pytest.approx(1.0)  # only the increase
    assert counted_evidence(1.5, Standing.REPEAT, peak=2.0) == 0.0
    assert counted_evidence(-0.3, Standing.REPEAT, peak=2.0) == -0.3


def test_a_known_good_template_counts_only_as_ham_from_day_one() -> None:
    state = AccountState()
    send(state, order_confirmation(1), START, SPAM_LIKE)
    memory = TemplateMemory.decode(state.templates)
    memory.trust_all()
    state.templates, state.evidence = memory.encode(), 0.0
    assert send(state, order_confirmation(2), START + 60, SPAM_LIKE)[1] is Standing.NORMAL
    assert state.evidence == 0.0


def test_a_new_account_is_not_locked_on_content_alone() -> None:
    state = AccountState()
    # Five different spam messages: full evidence each, over the threshold, but nothing else says spam.
    results = [send(state, raw, START + n * 60, 3.3) for n, raw in enumerate(DISTINCT_SPAM)]
    assert {standing for _, standing in results} == {Standing.NEW_CONTENT}
    assert state.evidence > POLICY.lock_threshold
    assert not any(locked for locked, _ in results)
    assert decide(0.999, state, POLICY, may_lock=False).account_risk == 1.0  # the risk is still told


@pytest.mark.parametrize(
    ("behaviour", "engagement", "says"),
    [
        (Behaviour(0.0, recipients_1h=120, recipient_domains_1h=3), 0.0, "120 recipients in the last hour"),
        (Behaviour(0.0, recipients_1h=30, recipient_domains_1h=25), 0.0, "25 recipient domains in the last hour"),
        (Behaviour(0.0, 2, 2, client_ips_1h=6), 0.0, "6 client addresses in the last hour"),
        (QUIET, 5.5, "bounces and complaints worth 5.5 nats"),
    ],
)
def test_behaviour_corroborates_a_new_accounts_spam(behaviour: Behaviour, engagement: float, says: str) -> None:
    assert corroboration(behaviour, engagement, POLICY, bad_outcomes=BOUNCES) == (says,)
    state = AccountState()
    # Corroborated, a new account's run of one spam counts copy by copy: a run is a run.
    results = [send(state, make_raw(body=LOTTERY), START + n * 60, 3.3, behaviour, engagement) for n in range(5)]
    assert [standing for _, standing in results[1:]] == [Standing.NEW_TEMPLATE] * 4
    assert any(locked for locked, _ in results)


def test_nothing_corroborates_quiet_mail_with_good_engagement() -> None:
    assert corroboration(QUIET, -2.0, POLICY) == ()
    assert corroboration(QUIET, 0.0, POLICY, known_spam=True, spam_campaign=True, compromised_verdict=True) == (
        "a near-copy of known spam",
        "an active spam-like campaign",
        "an admin's compromised verdict",
    )


def test_one_invalid_recipient_is_a_typo_two_corroborate() -> None:
    """A new shop's first invalid recipient among its first few (2.1 nats at the model's
    rates) is a typo as often as a spam run: the engagement corroborates from the second."""
    snapshot = EngagementSnapshot(recipients=5.0, outcomes={"invalid_recipient": 1.0}, feedback=1.0)
    one = engagement_evidence(snapshot)
    assert one >= POLICY.corroborating_engagement
    assert corroboration(QUIET, one, POLICY, bad_outcomes=bad_outcomes(snapshot)) == ()
    snapshot = EngagementSnapshot(recipients=6.0, outcomes={"invalid_recipient": 1.0, "complaint": 1.0}, feedback=2.0)
    two = engagement_evidence(snapshot)
    assert corroboration(QUIET, two, POLICY, bad_outcomes=bad_outcomes(snapshot)) == (
        f"bounces and complaints worth {two:.1f} nats",
    )


def test_established_needs_a_day_and_ten_messages() -> None:
    assert not is_established(DAY - 1, 500, POLICY)
    assert not is_established(30 * DAY, 9, POLICY)
    assert is_established(DAY, 10, POLICY)


def test_the_memory_keeps_16_templates_under_a_kilobyte_and_evicts_the_least_recently_seen() -> None:
    memory = TemplateMemory()
    rng = random.Random(5)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(2_000)]
    contents = [values_of(make_raw(body=" ".join(rng.sample(vocabulary, 40)))) for _ in range(20)]  # one-off mail
    memory.observe(contents[0], None, START, 1.0)
    memory.trust_all()  # the first is known-good: kept while ordinary ones come and go
    for n, values in enumerate(contents[1:], start=1):
        memory.observe(values, memory.match(values), START + n, 1.0)
    assert len(memory) == MAX_TEMPLATES
    assert len(memory.encode()) <= 664
    assert memory.match(contents[0]) is not None and memory.match(contents[0]).known_good
    assert memory.match(contents[1]) is None  # the least recently seen ordinary one went first
    assert memory.match(contents[19]) is not None
    # A repeat moves to the back of the queue.
    memory.observe(contents[5], memory.match(contents[5]), START + 100, 1.0)
    memory.observe(contents[1], None, START + 101, 1.0)
    assert memory.match(contents[5]) is not None and memory.match(contents[6]) is None


def test_a_peak_is_rounded_up_so_identical_copies_add_nothing() -> None:
    memory = TemplateMemory()
    values = values_of(order_confirmation(1))
    memory.observe(values, None, START, 2.71828)
    match = memory.match(values)
    assert match is not None and match.peak >= 2.71828
    assert counted_evidence(2.71828, Standing.REPEAT, match.peak) == 0.0


def test_templates_survive_the_json_the_shared_state_is_stored_as() -> None:
    state = AccountState(lock_signatures=(3, 7), compromised_verdict=True)
    send(state, order_confirmation(1), START, SPAM_LIKE)
    stored = _encode_state(state)
    assert len(orjson.loads(stored)["templates"]) <= 64  # one template: 31 bytes, base64
    assert _decode_state(stored) == state
