"""Campaigns, signature hit counts and the signature change counter in Redis, shared by every replica.

The Redis twin of `LocalContentState` (`service.fingerprints.state`): one Lua script per
fingerprinted message does what `CampaignTracker.observe` does in the process (find the
nearest cluster representative through the LSH band keys, or make a cluster; count the
sender; recount; detect the uptick), atomically, and returns the signature change
counter with it, so a message costs one round trip for all of it.

Key layout, all under one hash tag so that a script may touch any of them:

    {prefix}:{<prefix>:c}:next          string  the last cluster id
    {prefix}:{<prefix>:c}:ids           zset    cluster id -> cluster id (creation order: eviction)
    {prefix}:{<prefix>:c}:active        zset    cluster id -> active until (message clock)
    {prefix}:{<prefix>:c}:b:<bucket>    hash    band key's low 16 bits -> cluster ids, space-separated
    {prefix}:{<prefix>:c}:m:<id>        hash    representative `v` (64 16-bit values), first_seen,
                                                active_until, psum, pcount, detections, the cached
                                                counts and when they were counted, and its `bands`
    {prefix}:{<prefix>:c}:f:<id> | :l:<id>  zset  sender -> first / last seen (message clock)
    {prefix}:{<prefix>:c}:sigv          string  signature change counter
    {prefix}:{<prefix>:c}:sh:<sig id>   string  matches of a signature (expires with the signature TTL)

A band key (`service.fingerprints.index`) is 32 bits: its top 16 pick the bucket hash,
its low 16 the field, so the 16 band entries of 200,000 clusters sit in at most 65,536
small hashes. Clusters are bounded by the policy's capacity, oldest evicted, as in the
process; they carry no TTL (their clock is the messages', not Redis's). A sender is
`relay` NUL `account`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from features.behaviour import BehaviourSnapshot
from service.errors import SharedStateUnavailable
from service.fingerprints.campaigns import RECOUNT_SECONDS, CampaignPolicy, CampaignView, Cluster
from service.fingerprints.index import Probe
from service.fingerprints.state import Observed, Windows
from service.stores import AccountKey
from service.stores.degraded import DegradableBehaviour, SharedStateHealth, _guarded
from service.stores.redis_state import RedisBehaviourStore

T = TypeVar("T")

_FIXED_KEYS = 4  # next, ids, active, sigv; then one bucket key per band

_OBSERVE_LUA = """
local function fmt(x) return string.format('%.17g', x) end
local base = ARGV[1]
local at = tonumber(ARGV[2])
local values = ARGV[3]
local n_values = tonumber(ARGV[4])
local min_similarity = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local horizon = tonumber(ARGV[7])
local min_accounts = tonumber(ARGV[8])
local uptick_ratio = tonumber(ARGV[9])
local capacity = tonumber(ARGV[10])
local max_senders = tonumber(ARGV[11])
local recount = tonumber(ARGV[12])
local member = ARGV[13]
local hit, hits_ttl_ms = ARGV[14], ARGV[15]  -- a signature the message matched ('' for none): count it
local bands = #KEYS - 4  -- ARGV[16..]: each band's field, in the order of KEYS[5..]

local function meta(cid) return base .. ':m:' .. cid end

-- Values agreeing between two representatives (little-endian 16-bit values).
local function agreeing(a, b)
  local n = 0
  for i = 1, 2 * n_values - 1, 2 do
    if string.byte(a, i) == string.byte(b, i) and string.byte(a, i + 1) == string.byte(b, i + 1) then n = n + 1 end
  end
  return n
end

-- LshIndex.nearest: the most similar representative sharing a band key (the first of equals).
local seen, candidates = {}, {}
for i = 1, bands do
  local listed = redis.call('HGET', KEYS[4 + i], ARGV[15 + i])
  if listed then
    for id in string.gmatch(listed, '%d+') do
      local cid = tonumber(id)
      if not seen[cid] then seen[cid] = true; candidates[#candidates + 1] = cid end
    end
  end
end
table.sort(candidates)
local best, best_similarity = nil, -1
for _, cid in ipairs(candidates) do
  local rep = redis.call('HGET', meta(cid), 'v')
  if rep then
    local similarity = agreeing(rep, values) / n_values
    if similarity > best_similarity then best, best_similarity = cid, similarity end
  end
end

local function evict(old)
  local m = meta(old)
  local listed_bands = redis.call('HGET', m, 'bands')
  if listed_bands then
    for bucket, field in string.gmatch(listed_bands, '(%d+):(%d+)') do
      local key = base .. ':b:' .. bucket
      local listed = redis.call('HGET', key, field)
      if listed then
        local kept = {}
        for id in string.gmatch(listed, '%d+') do if tonumber(id) ~= old then kept[#kept + 1] = id end end
        if #kept == 0 then
          redis.call('HDEL', key, field)
        else
          redis.call('HSET', key, field, table.concat(kept, ' '))
        end
      end
    end
  end
  redis.call('DEL', m, base .. ':f:' .. old, base .. ':l:' .. old)
  redis.call('ZREM', KEYS[3], old)
end

local cid = best
if best == nil or best_similarity < min_similarity then
  cid = redis.call('INCR', KEYS[1])
  local parts = {}
  for i = 1, bands do
    local key, field = KEYS[4 + i], ARGV[15 + i]
    local listed = redis.call('HGET', key, field)
    redis.call('HSET', key, field, listed and (listed .. ' ' .. cid) or tostring(cid))
    parts[#parts + 1] = string.sub(key, #base + 4) .. ':' .. field
  end
  redis.call('HSET', meta(cid), 'v', values, 'first_seen', fmt(at), 'active_until', '0', 'psum', '0',
             'pcount', '0', 'detections', '0', 'bands', table.concat(parts, ' '))
  redis.call('ZADD', KEYS[2], cid, cid)
  local over = redis.call('ZCARD', KEYS[2]) - capacity
  if over > 0 then
    local gone = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #gone, 2 do evict(tonumber(gone[i])) end
  end
end

-- The sender: first seen is the earliest, last seen this message.
local m, firsts, lasts = meta(cid), base .. ':f:' .. cid, base .. ':l:' .. cid
local known = redis.call('ZSCORE', lasts, member)
redis.call('ZADD', firsts, 'LT', fmt(at), member)
redis.call('ZADD', lasts, fmt(at), member)
local over = redis.call('ZCARD', lasts) - max_senders
if over > 0 then
  local gone = redis.call('ZPOPMIN', lasts, over)
  for i = 1, #gone, 2 do redis.call('ZREM', firsts, gone[i]) end
end

-- Counting: when a sender joins, else at most every `recount` seconds (as in the process).
local state = redis.call('HMGET', m, 'counted_at', 'recent', 'new', 'established', 'active_until', 'psum', 'pcount')
local counted_at = tonumber(state[1])
local recent, new, established
if (not known) or counted_at == nil or math.abs(at - counted_at) >= recount then
  local window_start, horizon_start = at - window, at - horizon
  recent = redis.call('ZCOUNT', lasts, fmt(window_start), '+inf')
  new = redis.call('ZCOUNT', firsts, fmt(window_start), '+inf')
  if window_start >= horizon_start then
    -- Every sender new in the window was seen since the horizon: the rest are established.
    established = redis.call('ZCOUNT', lasts, fmt(horizon_start), '+inf') - new
  else
    established = 0
    for _, sender in ipairs(redis.call('ZRANGEBYSCORE', firsts, '-inf', '(' .. fmt(window_start))) do
      if tonumber(redis.call('ZSCORE', lasts, sender)) >= horizon_start then established = established + 1 end
    end
  end
  redis.call('HSET', m, 'counted_at', fmt(at), 'recent', recent, 'new', new, 'established', established)
else
  recent, new, established = tonumber(state[2]), tonumber(state[3]), tonumber(state[4])
end

local active_until = tonumber(state[5]) or 0
local was_active = active_until > at
local uptick = new >= min_accounts and new >= uptick_ratio * (established + 1)
if uptick then
  active_until = at + window
  redis.call('HSET', m, 'active_until', fmt(active_until))
  redis.call('ZADD', KEYS[3], fmt(active_until), cid)
end
local newly = uptick and not was_active
if newly then redis.call('HINCRBY', m, 'detections', 1) end
local hits = false
if hit ~= '' then
  hits = redis.call('INCR', base .. ':sh:' .. hit)
  redis.call('PEXPIRE', base .. ':sh:' .. hit, hits_ttl_ms)
end
return {cid, recent, new, established, active_until > at and 1 or 0, newly and 1 or 0,
        redis.call('GET', KEYS[4]), hits}
"""

# CampaignTracker.record_probability: the sum kept as a double, as in Python.
_RECORD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local total = tonumber(redis.call('HGET', KEYS[1], 'psum') or '0') + tonumber(ARGV[1])
local count = redis.call('HINCRBY', KEYS[1], 'pcount', 1)
local text = string.format('%.17g', total)
redis.call('HSET', KEYS[1], 'psum', text)
return {text, count}
"""


async def run_scripts(client: aioredis.Redis, calls: list[tuple[AsyncScript, list[str], list[Any]]]) -> list[Any]:
    """Several scripts in one round trip (a pipeline of EVALSHAs); one Redis had not loaded is loaded and run again.

    A script that got NOSCRIPT did not run, so running it again counts nothing twice.
    redis-py's own pipelined scripts ask SCRIPT EXISTS first, a round trip every time.
    """
    async with client.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
    for n, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            script, keys, args = calls[n]
            replies[n] = await script(keys=keys, args=args)  # loads it, then runs it
        elif isinstance(reply, Exception):
            raise reply
    return replies


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sender_member(key: AccountKey) -> str:
    # Names never hold NUL (refused at the edge), so the pair splits back unambiguously.
    return f"{key.relay}\x00{key.account}"


def _sender_key(member: bytes | str) -> AccountKey:
    relay, account = _text(member).split("\x00", 1)
    return AccountKey(relay, account)


def _observed(reply: list[Any], snapshot: BehaviourSnapshot | None = None) -> Observed:
    cluster_id, recent, new, established, active, newly, version, hits = reply
    view = CampaignView(
        cluster_id=int(cluster_id),
        accounts_in_window=int(recent),
        new_accounts=int(new),
        established_accounts=int(established),
        active=bool(active),
        newly_detected=bool(newly),
    )
    return Observed(view, int(version) if version is not None else 0, int(hits) if hits is not None else None, snapshot)


class RedisContentState:
    """`ContentState` in Redis: every replica counts campaigns and signature matches in one place."""

    shared = True

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        policy: CampaignPolicy,
        signature_ttl_seconds: float,
        health: SharedStateHealth | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: Redis Cluster would hash on them")
        self.client = client
        self.policy = policy
        self.health = health
        self.base = f"{prefix}:{{{prefix}:c}}"
        self._hits_ttl_ms = int(signature_ttl_seconds * 1000)
        self._observe = client.register_script(_OBSERVE_LUA)
        self._record = client.register_script(_RECORD_LUA)

    def _meta(self, cluster_id: int) -> str:
        return f"{self.base}:m:{cluster_id}"

    async def _call(self, call: Callable[[], Awaitable[T]], fallback: T, *, required: bool = False) -> T:
        """Through the breaker (`service.stores.degraded`); the fallback when Redis is unreachable.

        Only the per-message calls (`required`) fail closed with a 503 when so
        configured: an announcement or a listing makes do with the fallback.
        """

        async def instead() -> T:
            return fallback

        if self.health is None:
            return await call()
        try:
            return await _guarded(self.health, call, instead)
        except SharedStateUnavailable:
            if required:
                raise
            return fallback

    async def observe(
        self, probe: Probe, key: AccountKey, at: float, *, hit: int | None = None, windows: Windows | None = None
    ) -> Observed:
        """The campaign count, the signature version and `hit`'s count, with the account's windows if given.

        With the windows of a Redis behaviour store, all in one round trip: one pipeline
        of the two scripts.
        """
        policy = self.policy
        band_keys = probe.keys.tolist()
        keys = [f"{self.base}:{name}" for name in ("next", "ids", "active", "sigv")]
        keys += [f"{self.base}:b:{band >> 16}" for band in band_keys]
        args: list[Any] = [
            self.base,
            repr(float(at)),
            probe.values.astype("<u2").tobytes(),
            len(probe.values),
            repr(float(policy.min_similarity)),
            repr(float(policy.window_seconds)),
            repr(float(policy.horizon_seconds)),
            policy.min_accounts,
            repr(float(policy.uptick_ratio)),
            policy.capacity,
            policy.max_accounts_per_cluster,
            repr(RECOUNT_SECONDS),
            sender_member(key),
            "" if hit is None else hit,
            self._hits_ttl_ms,
            *(band & 0xFFFF for band in band_keys),
        ]
        behaviour = windows[0] if windows is not None else None
        if isinstance(behaviour, DegradableBehaviour) and behaviour.health is self.health:
            behaviour = behaviour.inner
        if windows is not None and not isinstance(behaviour, RedisBehaviourStore):  # not in this Redis: one by one
            snapshot = await windows[0].observe(key, windows[1])
            found = await self.observe(probe, key, at, hit=hit)
            return Observed(found.campaign, found.signature_version, found.hits, snapshot)

        async def call() -> Observed:
            if windows is None or not isinstance(behaviour, RedisBehaviourStore):
                return _observed(await self._observe(keys=keys, args=args))
            window_keys, window_args = behaviour.command(key, windows[1])
            window_reply, reply = await run_scripts(
                self.client, [(behaviour.script, window_keys, window_args), (self._observe, keys, args)]
            )
            return _observed(reply, behaviour.snapshot(window_reply, windows[1]))

        async def alone() -> Observed:  # Redis unreachable: the windows take their own fallback; no campaign
            return Observed(None, snapshot=await windows[0].observe(key, windows[1]) if windows is not None else None)

        if self.health is None:
            return await call()
        return await _guarded(self.health, call, alone)

    async def record_probability(self, cluster_id: int, probability: float) -> float | None:
        async def call() -> float | None:
            reply = await self._record(keys=[self._meta(cluster_id)], args=[repr(float(probability))])
            if reply is None:
                return None
            total, count = reply
            return float(_text(total)) / int(count)

        return await self._call(call, None, required=True)

    async def signature_hit(self, signature_id: int, local_hits: int, *, undo: bool = False) -> int:
        async def call() -> int:
            name = f"{self.base}:sh:{signature_id}"
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incrby(name, -1 if undo else 1)
                pipe.pexpire(name, self._hits_ttl_ms)
                count, _ = await pipe.execute()
            return int(count) - 1

        return await self._call(call, local_hits, required=not undo)

    async def signatures_changed(self) -> int | None:
        async def call() -> int | None:
            return int(await self.client.incr(f"{self.base}:sigv"))

        # Unreachable: the other replicas find the change by their periodic read of the feed.
        return await self._call(call, None)

    async def cluster(self, cluster_id: int) -> Cluster | None:
        async def call() -> Cluster | None:
            [found] = await self._clusters([cluster_id])
            return found

        return await self._call(call, None)

    async def active(self, now: float) -> list[Cluster]:
        async def call() -> list[Cluster]:
            ids = await self.client.zrangebyscore(f"{self.base}:active", f"({float(now)!r}", "+inf")
            found = await self._clusters(sorted(int(i) for i in ids))
            return [c for c in found if c is not None and c.active_until > now]

        return await self._call(call, [])

    async def clusters(self) -> int:
        async def call() -> int:
            return int(await self.client.zcard(f"{self.base}:ids"))

        return await self._call(call, 0)

    async def _clusters(self, cluster_ids: list[int]) -> list[Cluster | None]:
        if not cluster_ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for cluster_id in cluster_ids:
                pipe.hgetall(self._meta(cluster_id))
                pipe.zrange(f"{self.base}:l:{cluster_id}", 0, -1, withscores=True)
                pipe.zrange(f"{self.base}:f:{cluster_id}", 0, -1, withscores=True)
            replies = await pipe.execute()
        found: list[Cluster | None] = []
        for n, cluster_id in enumerate(cluster_ids):
            stored, lasts, firsts = replies[3 * n : 3 * n + 3]
            if not stored:
                found.append(None)
                continue
            fields = {_text(k): v for k, v in stored.items()}
            first = {_text(member): float(score) for member, score in firsts}
            senders: OrderedDict[AccountKey, tuple[float, float]] = OrderedDict(
                (_sender_key(member), (first.get(_text(member), float(score)), float(score))) for member, score in lasts
            )
            found.append(
                Cluster(
                    cluster_id=cluster_id,
                    first_seen=float(_text(fields["first_seen"])),
                    senders=senders,
                    active_until=float(_text(fields.get("active_until", b"0"))),
                    probability_sum=float(_text(fields.get("psum", b"0"))),
                    probability_count=int(_text(fields.get("pcount", b"0"))),
                    detections=int(_text(fields.get("detections", b"0"))),
                )
            )
        return found
