"""Hot per-account state in Redis, so that every replica of the service shares it.

The Redis twins of `service.stores.memory`: behaviour windows, engagement counts,
account state and the message index give the same numbers as the in-process stores,
and every update is atomic across processes (one Lua script, or WATCH/MULTI).

Key layout (the prefix must not contain braces):

    {prefix}:b:{<tag>}:1m | :1h | :24h     hash  bucket index -> "messages:recipients"
    {prefix}:b:{<tag>}:base                hash  DecayedRate count/last/first, and seq
    {prefix}:b:{<tag>}:rd:t | :ip:t        zset  recent domain / client IP -> last seen
    {prefix}:b:{<tag>}:rd:s | :ip:s        zset  the same values -> update sequence (LRU order)
    {prefix}:b:{<tag>}:kd                  zset  known domain -> update sequence (LRU order)
    {prefix}:e:{<tag>}                     hash  DecayedCounts: "last", "v:<name>", "seen"
    {prefix}:a:{<tag>}                     string  AccountState as JSON (its templates packed, at most 664 characters)
    {prefix}:mi:{<sha1 of Message-ID>}     list  MessageRef JSON, oldest first, last 4
    {prefix}:qi:{<sha1 of queue id>}       string  MessageRef JSON

`<tag>` is a sha1 of (relay, account), so one account's keys share a Redis Cluster
slot whatever characters its names hold, and a Lua script may touch all of them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, WatchError

from features.behaviour import BASELINE_TAU_S, MIN_BASELINE_HISTORY_S, BehaviourSnapshot, Observation
from features.engagement import ENGAGEMENT_TAU_S, DecayedCounts, EngagementSnapshot
from service.stores import AccountKey, AccountState, AccountStatus, MessageRef
from service.stores.memory import MAX_KNOWN_DOMAINS, MAX_RECENT_VALUES, AccountWindows

T = TypeVar("T")

DEFAULT_BEHAVIOUR_TTL_S = 8 * 86_400  # the 24 h window plus a week: the baseline has a one-week half-life
DEFAULT_ENGAGEMENT_TTL_S = 30 * 86_400  # ten half-lives: what is left is noise
DEFAULT_ACCOUNT_TTL_S = 30 * 86_400  # an idle active account falls back to the durable ledger
DEFAULT_MESSAGE_INDEX_TTL_S = 3 * 86_400  # feedback (bounces, complaints) arrives within days
UPDATE_ATTEMPTS = 50

# Bucket sizes taken from the in-process windows, so the two can never drift apart.
_TEMPLATE = AccountWindows()
_WINDOWS = tuple((w.bucket_seconds, w.buckets) for w in (_TEMPLATE.minute, _TEMPLATE.hour, _TEMPLATE.day))
_STATE_FIELDS = frozenset(f.name for f in fields(AccountState))


class AccountStateConflict(RuntimeError):
    """An account's state kept changing under `update`: every attempt lost the race."""


def account_tag(key: AccountKey) -> str:
    """A Redis Cluster hash tag for the account: its keys land in one slot."""
    # A NUL cannot occur in either name, so ("a", "b:c") and ("a:b", "c") differ.
    return "{" + hashlib.sha1(f"{key.relay}\x00{key.account}".encode()).hexdigest()[:32] + "}"


def _check_prefix(prefix: str) -> str:
    if "{" in prefix or "}" in prefix:
        raise ValueError("the key prefix must not contain braces: Redis Cluster would hash on them")
    return prefix


def _text(value: bytes | str) -> str:
    # The client may or may not have been created with decode_responses=True.
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    return float(_text(value)) if value is not None and _text(value) != "" else None


# Lua numbers are doubles, as Python floats are, so the arithmetic ports as is; floats
# go back as '%.17g' strings because Redis truncates a Lua number reply to an integer.
_OBSERVE_LUA = """
local function fmt(x) return string.format('%.17g', x) end

local ts = tonumber(ARGV[1])
local rcpts = tonumber(ARGV[2])
local client_ip = ARGV[9]
local recent_cap = tonumber(ARGV[10])
local known_cap = tonumber(ARGV[11])
local tau = tonumber(ARGV[12])
local min_history = tonumber(ARGV[13])
local ttl_ms = ARGV[14]
local base = KEYS[4]

-- BucketWindow.add: counts of the window ending at this message's bucket.
local function window_add(key, cur_field, n)
  local cur = tonumber(cur_field)
  local flat = redis.call('HGETALL', key)
  local counts = {}
  local top = nil
  for i = 1, #flat, 2 do
    counts[flat[i]] = flat[i + 1]
    local b = tonumber(flat[i])
    if top == nil or b > top then top = b end
  end
  if top ~= nil and cur < top - n + 1 then
    return 1, rcpts  -- older than the newest message's window: it counts only itself
  end
  local m, r = 1, rcpts
  if counts[cur_field] then
    local pm, pr = string.match(counts[cur_field], '^(-?%d+):(-?%d+)$')
    m, r = m + tonumber(pm), r + tonumber(pr)
  end
  counts[cur_field] = string.format('%d:%d', m, r)
  redis.call('HSET', key, cur_field, counts[cur_field])
  if top == nil or cur > top then top = cur end
  -- Stale relative to the newest bucket, not this one: a late message keeps newer history.
  local expired = top - n + 1
  local oldest = cur - n + 1
  local msgs, total = 0, 0
  local stale = {}
  for field, value in pairs(counts) do
    local b = tonumber(field)
    if b < expired then
      stale[#stale + 1] = field
    elseif b >= oldest and b <= cur then
      local bm, br = string.match(value, '^(-?%d+):(-?%d+)$')
      msgs, total = msgs + tonumber(bm), total + tonumber(br)
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return msgs, total
end

local m1, r1 = window_add(KEYS[1], ARGV[3], tonumber(ARGV[6]))
local mh, rh = window_add(KEYS[2], ARGV[4], tonumber(ARGV[7]))
local md, rd = window_add(KEYS[3], ARGV[5], tonumber(ARGV[8]))

-- DecayedRate: rate_per_hour before this hour, then add.
local b = redis.call('HMGET', base, 'count', 'last', 'first', 'seq')
local count, last, first = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
local seq = tonumber(b[4]) or 0
local baseline = ''
local recent_count, recent_seconds = mh - 1, 3600
if first ~= nil and last ~= nil and not (ts - first < min_history + recent_seconds) then
  local decayed = count * math.exp(-math.max(0.0, ts - last) / tau) - recent_count
  local covered = tau * (1.0 - math.exp(-(ts - first) / tau)) - recent_seconds
  baseline = fmt(math.max(0.0, decayed) / (covered / 3600))
end
local history = '0'
if first ~= nil then history = fmt(ts - first) end
if last == nil or first == nil then
  count, last, first = 1.0, ts, ts
else
  if ts >= last then
    count = count * math.exp(-(ts - last) / tau) + 1.0
    last = ts
  else  -- out of order: weigh it as of `last`
    count = count + math.exp(-(last - ts) / tau)
  end
  first = math.min(first, ts)
end

-- The sequence number orders values by last update, as an OrderedDict's move_to_end does.
local function next_seq()
  seq = seq + 1
  return string.format('%d', seq)
end

-- RecentValues.add: keep the newer timestamp; drop the least recently updated past the cap.
local function recent_add(tkey, skey, value)
  local old = redis.call('ZSCORE', tkey, value)
  if (not old) or ts >= tonumber(old) then
    redis.call('ZADD', tkey, fmt(ts), value)
    redis.call('ZADD', skey, next_seq(), value)
  end
  local over = redis.call('ZCARD', skey) - recent_cap
  if over > 0 then
    local gone = redis.call('ZPOPMIN', skey, over)
    for i = 1, #gone, 2 do redis.call('ZREM', tkey, gone[i]) end
  end
end

local new_domains = 0
for i = 15, #ARGV do
  if not redis.call('ZSCORE', KEYS[9], ARGV[i]) then new_domains = new_domains + 1 end
end
for i = 15, #ARGV do
  recent_add(KEYS[5], KEYS[6], ARGV[i])
  redis.call('ZADD', KEYS[9], next_seq(), ARGV[i])
end
local over = redis.call('ZCARD', KEYS[9]) - known_cap
if over > 0 then redis.call('ZPOPMIN', KEYS[9], over) end
if client_ip ~= '' then recent_add(KEYS[7], KEYS[8], client_ip) end

redis.call('HSET', base, 'count', fmt(count), 'last', fmt(last), 'first', fmt(first), 'seq', string.format('%d', seq))
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl_ms) end

local function distinct_since(key, since)
  return redis.call('ZCOUNT', key, '(' .. fmt(since), fmt(ts))
end

return {m1, mh, md, r1, rh, rd, baseline, history,
        distinct_since(KEYS[5], ts - 3600), distinct_since(KEYS[7], ts - 3600), distinct_since(KEYS[7], ts - 86400),
        new_domains}
"""


class RedisBehaviourStore:
    """`BehaviourStore` in Redis: `AccountWindows.observe`, one Lua script per message."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "og",
        ttl_seconds: int = DEFAULT_BEHAVIOUR_TTL_S,
        *,
        max_known_domains: int = MAX_KNOWN_DOMAINS,
        max_recent_values: int = MAX_RECENT_VALUES,
    ) -> None:
        self._prefix = _check_prefix(prefix)
        self._ttl_ms = ttl_seconds * 1000
        self._max_known_domains = max_known_domains
        self._max_recent_values = max_recent_values
        self._script = client.register_script(_OBSERVE_LUA)

    def keys(self, key: AccountKey) -> list[str]:
        """The account's keys, in the order the script takes them."""
        base = f"{self._prefix}:b:{account_tag(key)}"
        return [f"{base}:{name}" for name in ("1m", "1h", "24h", "base", "rd:t", "rd:s", "ip:t", "ip:s", "kd")]

    async def observe(self, key: AccountKey, observation: Observation) -> BehaviourSnapshot:
        keys, args = self.command(key, observation)
        return self.snapshot(await self._script(keys=keys, args=args), observation)

    @property
    def script(self) -> AsyncScript:
        return self._script

    def command(self, key: AccountKey, observation: Observation) -> tuple[list[str], list[Any]]:
        """The script's keys and arguments for one message (`observe`, or a pipeline that runs it with more)."""
        ts = observation.timestamp
        # Iterated in the same order as AccountWindows.observe iterates its set, so
        # that ties at the caps evict the same domains.
        domains = list(set(observation.recipient_domains))
        args: list[Any] = [repr(float(ts)), observation.recipients]
        args += [int(ts // bucket_seconds) for bucket_seconds, _ in _WINDOWS]  # Python's floor, not Lua's
        args += [buckets for _, buckets in _WINDOWS]
        args += [observation.client_ip or "", self._max_recent_values, self._max_known_domains]
        args += [repr(BASELINE_TAU_S), MIN_BASELINE_HISTORY_S, self._ttl_ms, *domains]
        return self.keys(key), args

    def snapshot(self, reply: list[Any], observation: Observation) -> BehaviourSnapshot:
        """The script's reply as the windows' snapshot."""
        domains = set(observation.recipient_domains)
        m1, mh, md, r1, rh, rd, baseline, history, rd_1h, ip_1h, ip_24h, new_domains = reply
        return BehaviourSnapshot(
            msgs_1m=int(m1),
            msgs_1h=int(mh),
            msgs_24h=int(md),
            rcpts_1m=int(r1),
            rcpts_1h=int(rh),
            rcpts_24h=int(rd),
            baseline_per_hour=_float(baseline),
            history_seconds=max(0.0, _float(history) or 0.0),
            rcpt_domains_1h=int(rd_1h),
            client_ips_1h=int(ip_1h),
            client_ips_24h=int(ip_24h),
            new_rcpt_domain_share=int(new_domains) / len(domains) if domains else 0.0,
            recipients=observation.recipients,
        )


# DecayedCounts.add for each (name, amount) in turn; "seen" marks an account whose
# counts are all still empty, which has a snapshot (of zeros) in memory too.
_ENGAGEMENT_ADD_LUA = """
local function fmt(x) return string.format('%.17g', x) end
local key = KEYS[1]
local ts = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local flat = redis.call('HGETALL', key)
local values, last = {}, nil
for i = 1, #flat, 2 do
  if flat[i] == 'last' then
    last = tonumber(flat[i + 1])
  elseif string.sub(flat[i], 1, 2) == 'v:' then
    values[flat[i]] = tonumber(flat[i + 1])
  end
end
for i = 4, #ARGV, 2 do
  local name, amount = 'v:' .. ARGV[i], tonumber(ARGV[i + 1])
  if last == nil then last = ts end
  if ts > last then
    local factor = math.exp(-(ts - last) / tau)
    for k, v in pairs(values) do values[k] = v * factor end
    last = ts
  else
    amount = amount * math.exp(-(last - ts) / tau)
  end
  values[name] = (values[name] or 0.0) + amount
end
local out = {'seen', '1'}
if last ~= nil then out[#out + 1] = 'last'; out[#out + 1] = fmt(last) end
for k, v in pairs(values) do out[#out + 1] = k; out[#out + 1] = fmt(v) end
redis.call('HSET', key, unpack(out))
redis.call('PEXPIRE', key, ARGV[3])
return 1
"""


class RedisEngagementStore:
    """`EngagementStore` in Redis: `DecayedCounts` per account, updated by one Lua script."""

    def __init__(self, client: aioredis.Redis, prefix: str = "og", ttl_seconds: int = DEFAULT_ENGAGEMENT_TTL_S) -> None:
        self._client = client
        self._prefix = _check_prefix(prefix)
        self._ttl_ms = ttl_seconds * 1000
        self._script = client.register_script(_ENGAGEMENT_ADD_LUA)

    def key(self, key: AccountKey) -> str:
        return f"{self._prefix}:e:{account_tag(key)}"

    async def add(self, key: AccountKey, counts: dict[str, float], timestamp: float) -> None:
        args: list[Any] = [repr(float(timestamp)), repr(ENGAGEMENT_TAU_S), self._ttl_ms]
        for name, amount in counts.items():
            args += [name, repr(float(amount))]
        await self._script(keys=[self.key(key)], args=args)

    async def snapshot(self, key: AccountKey) -> EngagementSnapshot | None:
        stored = await self._client.hgetall(self.key(key))
        if not stored:
            return None
        counts = DecayedCounts()
        for field, value in stored.items():
            name = _text(field)
            if name == "last":
                counts.last = float(_text(value))
            elif name.startswith("v:"):
                counts.values[name[2:]] = float(_text(value))
        return EngagementSnapshot.from_counts(counts)


def _encode_state(state: AccountState) -> bytes:
    return orjson.dumps(asdict(state))


def _decode_state(raw: bytes | str) -> AccountState:
    data = orjson.loads(raw)
    state = AccountState(**{name: value for name, value in data.items() if name in _STATE_FIELDS})
    state.status = AccountStatus(state.status)
    state.lock_signatures = tuple(state.lock_signatures)  # JSON has no tuples
    return state


def _expires(state: AccountState) -> bool:
    # A lock, a rate limit or an allowlisting is a decision: it must never silently vanish.
    return state.status is AccountStatus.ACTIVE and not state.allowlisted


class RedisAccountStateStore:
    """`AccountStateStore` in Redis, with an optimistic `update` for read-modify-write."""

    def __init__(self, client: aioredis.Redis, prefix: str = "og", ttl_seconds: int = DEFAULT_ACCOUNT_TTL_S) -> None:
        self._client = client
        self._prefix = _check_prefix(prefix)
        self._ttl_ms = ttl_seconds * 1000

    def key(self, key: AccountKey) -> str:
        return f"{self._prefix}:a:{account_tag(key)}"

    def _set_args(self, state: AccountState) -> dict[str, Any]:
        # A plain SET drops any TTL, so a state that must not expire is persisted by it.
        return {"px": self._ttl_ms} if _expires(state) else {}

    async def load(self, key: AccountKey) -> AccountState | None:
        raw = await self._client.get(self.key(key))
        return _decode_state(raw) if raw is not None else None

    async def get(self, key: AccountKey) -> AccountState:
        return await self.load(key) or AccountState()

    async def put(self, key: AccountKey, state: AccountState) -> None:
        await self._client.set(self.key(key), _encode_state(state), **self._set_args(state))

    async def restore(self, key: AccountKey, state: AccountState) -> bool:
        """Load a stored lifecycle status at start-up unless Redis already has one; whether it was set."""
        done = await self._client.set(self.key(key), _encode_state(state), nx=True, **self._set_args(state))
        return bool(done)

    async def update(
        self,
        key: AccountKey,
        mutate: Callable[[AccountState], T],
        *,
        default: Callable[[], Awaitable[AccountState]] | None = None,
    ) -> tuple[AccountState, T]:
        """Apply `mutate` (pure; it may run more than once) atomically; the stored state and its result.

        `default` gives the state of an account Redis does not have (the durable ledger).
        """
        name = self.key(key)
        # redis-py's transaction() retries forever; a bound turns a livelock into an error.
        async with self._client.pipeline(transaction=True) as pipe:
            for attempt in range(UPDATE_ATTEMPTS):
                try:
                    await pipe.watch(name)
                    raw = await pipe.get(name)
                    if raw is not None:
                        state = _decode_state(raw)
                    else:
                        state = replace(await default()) if default is not None else AccountState()
                    result = mutate(state)
                    pipe.multi()
                    pipe.set(name, _encode_state(state), **self._set_args(state))
                    await pipe.execute()
                    return state, result
                except WatchError:
                    # Jitter, so that replicas that collided do not collide again in lockstep.
                    await asyncio.sleep(random.uniform(0, min(0.0005 * (attempt + 1), 0.01)))
        raise AccountStateConflict(f"account state of {key.relay}/{key.account} changed {UPDATE_ATTEMPTS} times")


def _encode_ref(ref: MessageRef) -> bytes:
    fingerprint = base64.b64encode(ref.fingerprint).decode() if ref.fingerprint is not None else None
    return orjson.dumps({**asdict(ref), "fingerprint": fingerprint})


def _decode_ref(raw: bytes | str) -> MessageRef:
    data = orjson.loads(raw)
    fingerprint = data.pop("fingerprint", None)
    return MessageRef(**data, fingerprint=base64.b64decode(fingerprint) if fingerprint is not None else None)


def _id_tag(value: str) -> str:
    # Message-IDs are long and arbitrary: a hash keeps keys short and brace-free.
    return "{" + hashlib.sha1(value.encode()).hexdigest() + "}"


class RedisMessageIndex:
    """Recently scored messages by Message-ID and queue id, as `MemoryMessageIndex`, bounded by TTL."""

    KEEP_PER_MESSAGE_ID = 4  # the same Message-ID through a few relays at most

    def __init__(
        self, client: aioredis.Redis, prefix: str = "og", ttl_seconds: int = DEFAULT_MESSAGE_INDEX_TTL_S
    ) -> None:
        self._client = client
        self._prefix = _check_prefix(prefix)
        self._ttl_ms = ttl_seconds * 1000

    def message_key(self, message_id: str) -> str:
        return f"{self._prefix}:mi:{_id_tag(message_id)}"

    def queue_key(self, queue_id: str) -> str:
        return f"{self._prefix}:qi:{_id_tag(queue_id)}"

    async def remember(self, ref: MessageRef) -> None:
        data = _encode_ref(ref)
        message_key = self.message_key(ref.message_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(message_key, data)
            pipe.ltrim(message_key, -self.KEEP_PER_MESSAGE_ID, -1)
            pipe.pexpire(message_key, self._ttl_ms)
            if ref.queue_id:
                pipe.set(self.queue_key(ref.queue_id), data, px=self._ttl_ms)
            await pipe.execute()

    async def find(self, message_id: str | None, queue_id: str | None) -> list[MessageRef]:
        """The refs under the Message-ID, oldest first, then the queue id's if not among them."""
        async with self._client.pipeline(transaction=False) as pipe:
            if message_id:
                pipe.lrange(self.message_key(message_id), 0, -1)
            if queue_id:
                pipe.get(self.queue_key(queue_id))
            replies = await pipe.execute()
        found = [_decode_ref(raw) for raw in replies[0]] if message_id else []
        if queue_id and (raw := replies[-1]) is not None and (ref := _decode_ref(raw)) not in found:
            found.append(ref)
        return found


async def redis_ping(client: aioredis.Redis) -> bool:
    """Whether Redis answers; never raises (for readiness checks)."""
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
