-- Tollgate limiter: check and charge every limit of one request atomically.
--
-- ARGV[1]  'admit', 'settle', or 'undo' (take back an admit whose other half, in another
--          cluster slot, was denied)
-- ARGV[2]  now in ms, or '0' for the Redis server clock (tests pin the clock)
-- ARGV[3]  request id (member of holds and leases)
-- ARGV[4]  lease in ms (holds and concurrency leases expire after it: a crashed request
--          never keeps capacity)
-- ARGV[5]  number of limits; then one value per limit,
--          'kind,window,amount,class,monitor,thresholds,charge':
--          kind     'r' rolling, 'd' calendar day, 'm' calendar month, 'c' concurrent
--          window   window in ms (rolling) or 0
--          amount   the limit
--          class    'n' counted at once (requests), 'h' held then settled (tokens, cost),
--                   'c' concurrency lease
--          monitor  '1': never deny, only count and report
--          thresholds  percentages separated by ';', e.g. '80;100'
--          charge   admit: what this request needs; settle: what it really used
-- KEYS, per limit by class: 'n' its counter hash; 'c' the counter hash (alert marks) and
--          the lease set; 'h' the counter hash, the holds set and the hold amounts hash.
--
-- Returns {admitted, denied_index, retry_ms, used_1, reset_ms_1, ..., '#', crossings...}
-- where crossings are triples (limit index, threshold, used).

local mode = ARGV[1]
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local rid = ARGV[3]
local lease = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local floor = math.floor

-- Rolling windows are counted in 100 sub-buckets, kept in a ring of fields
-- 'b<slot>' = '<bucket id>:<value>'. The count includes the bucket a window started in,
-- so no interval of the window's length ever holds more than the limit, and a limit
-- sustains at least 99% of its amount per window. Field 'g' holds the bucket width a
-- counter was made with; a counter made before it existed (60 sub-buckets, no 'g') keeps
-- its ring, so nothing it counted is forgotten.
local SUB_BUCKETS, OLD_SUB_BUCKETS = 100, 60
local function width(window, parts)
  local bms = floor(window / parts)
  if bms < 1 then bms = 1 end
  return bms
end
-- The ring of a counter: its bucket width and count, and whether its stored width fits
-- neither ring of this window (the limit's window was changed).
local function geometry(window, g, lp)
  local bms, old = width(window, SUB_BUCKETS), width(window, OLD_SUB_BUCKETS)
  if g == old or (not g and lp) then bms = old end
  return bms, math.ceil(window / bms), g ~= nil and g ~= bms
end

-- A changed window: the count starts over in the new ring (holds and alert marks stay).
local function forget_ring(ck)
  local drop = {}
  for _, f in ipairs(redis.call('HKEYS', ck)) do
    if string.sub(f, 1, 1) == 'b' or f == 't' or f == 'lp' or f == 'g' then
      drop[#drop + 1] = f
    end
  end
  for i = 1, #drop, 1000 do
    redis.call('HDEL', ck, unpack(drop, i, math.min(i + 999, #drop)))
  end
end

local function ring(ck, window)
  local st = redis.call('HMGET', ck, 'g', 'lp')
  local bms, nb, changed = geometry(window, tonumber(st[1]), st[2])
  if changed then forget_ring(ck) end
  return bms, nb
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- The current calendar period: its id and when it ends (UTC).
local function period(kind)
  local day = floor(now / 86400000)
  if kind == 'd' then
    return day, (day + 1) * 86400000
  end
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return y * 12 + m, days_from_civil(ny, nm, 1) * 86400000
end

-- Rolling counters keep a running total 't' of the buckets in the window as of bucket
-- 'lp'; moving on subtracts only the buckets that left, so a check costs O(1) however
-- many sub-buckets the window has.
local function parse_bucket(value)
  if not value then return nil, 0 end
  local id, v = string.match(value, '^(%d+):(%-?%d+)$')
  return tonumber(id), tonumber(v) or 0
end

-- Every bucket still in the window, oldest first (for a denial's retry time, or when the
-- clock moved backwards).
local function scan(ck, cur, nb)
  local fields = redis.call('HGETALL', ck)
  local total, buckets = 0, {}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 1) == 'b' then
      local id, v = parse_bucket(fields[i + 1])
      if id and id >= cur - nb and id <= cur then
        total = total + v
        buckets[#buckets + 1] = {id, v}
      end
    end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return total, buckets
end

-- One read per counter per call: what advance() and period_state() learn is kept here
-- and updated by the writes below.
local state = {}

local function advance(ck, window)
  local c = state[ck]
  if c then return c end
  -- One read for a counter of the current ring; a second for an older one's.
  local bms = width(window, SUB_BUCKETS)
  local nb = math.ceil(window / bms)
  local cur = floor(now / bms)
  local st = redis.call('HMGET', ck, 't', 'lp', 'b' .. ((cur - nb) % (nb + 1)),
                        'b' .. (cur % (nb + 1)), 'held', 'g')
  local gbms, gnb, changed = geometry(window, tonumber(st[6]), st[2])
  if changed then
    forget_ring(ck)
    st = {nil, nil, nil, nil, st[5]}
  elseif gbms ~= bms then
    bms, nb = gbms, gnb
    cur = floor(now / bms)
    st = redis.call('HMGET', ck, 't', 'lp', 'b' .. ((cur - nb) % (nb + 1)),
                    'b' .. (cur % (nb + 1)), 'held')
  end
  local total, lp = tonumber(st[1]) or 0, tonumber(st[2])
  if lp ~= nil and cur < lp then
    -- The clock went back (a failover to a server with a slower clock): count and charge
    -- as of the bookmark, so nothing already counted is forgotten.
    cur = lp
    local again = redis.call('HMGET', ck, 'b' .. ((cur - nb) % (nb + 1)), 'b' .. (cur % (nb + 1)))
    st[3], st[4] = again[1], again[2]
  end
  -- 'moved': the key is new or entered a new bucket; its TTL is renewed only then (it
  -- outlives a bucket by far, so renewing once per bucket keeps live keys alive).
  c = {cur = cur, bms = bms, nb = nb, held = tonumber(st[5]) or 0, moved = lp ~= cur}
  local cid, cv = parse_bucket(st[4])
  c.curval = (cid == cur) and cv or 0
  if lp == nil or lp == cur then
    c.oldest = parse_bucket(st[3])
  else
    if cur - lp > nb then
      total = 0  -- every bucket left the window
    else
      local fields = {}
      for id = lp - nb, cur - nb - 1 do fields[#fields + 1] = 'b' .. (id % (nb + 1)) end
      local values = redis.call('HMGET', ck, unpack(fields))
      for j = 1, #values do
        local id, v = parse_bucket(values[j])
        if id == lp - nb + j - 1 then total = total - v end
      end
    end
    redis.call('HSET', ck, 't', total, 'lp', cur, 'g', bms)
  end
  c.total = total
  state[ck] = c
  return c
end

local function period_state(ck, kind)
  local c = state[ck]
  if c then return c end
  local pid, ends = period(kind)
  local st = redis.call('HMGET', ck, 'pid', 'pv', 'held')
  local spid = tonumber(st[1])
  c = {pid = pid, ends = ends, spid = spid, held = tonumber(st[3]) or 0, total = 0}
  -- A later period than ours means the clock went back: keep counting that one.
  if spid and spid >= pid then c.total = tonumber(st[2]) or 0 end
  state[ck] = c
  return c
end

-- How long a rolling limit's keys live: past the window and any lease, so no key that
-- holds live state expires before the others.
local function rolling_ttl(window)
  local ttl = window * 2 + math.ceil(window / OLD_SUB_BUCKETS) + lease
  if lease * 2 > ttl then ttl = lease * 2 end
  return ttl
end

-- Committed usage of a counter, and ms until some of it frees (0: unknown/none).
local function committed(ck, kind, window)
  if kind == 'r' then
    local c = advance(ck, window)
    local reset = 0
    if c.oldest and c.oldest >= c.cur - c.nb then reset = (c.oldest + c.nb + 1) * c.bms - now end
    if reset <= 0 and c.total > 0 then reset = window end
    return c.total, reset
  elseif kind == 'd' or kind == 'm' then
    local c = period_state(ck, kind)
    return c.total, c.ends - now
  end
  return 0, 0
end

local function add_committed(ck, kind, window, value)
  if value == 0 then return end
  if kind == 'r' then
    local c = advance(ck, window)
    c.curval = c.curval + value
    c.total = c.total + value
    redis.call('HSET', ck, 'b' .. (c.cur % (c.nb + 1)), c.cur .. ':' .. c.curval,
               't', c.total, 'lp', c.cur, 'g', c.bms)
    if c.moved then
      redis.call('PEXPIRE', ck, rolling_ttl(window))
      c.moved = false
    end
  else
    local c = period_state(ck, kind)
    if c.spid and c.spid >= c.pid then
      redis.call('HINCRBY', ck, 'pv', value)
    else
      -- A new period (or a new key): the expiry is set once per period.
      redis.call('HSET', ck, 'pid', c.pid, 'pv', value)
      c.spid = c.pid
      local until_ms = c.ends + 86400000
      if now + lease * 2 > until_ms then until_ms = now + lease * 2 end
      redis.call('PEXPIREAT', ck, until_ms)
    end
    c.total = c.total + value
  end
end

-- Take back a charge made at time 'now' (the admit's time), in the bucket or period it
-- went to; a bucket that has left the window since needs nothing.
local function undo_committed(ck, kind, window, value)
  if kind == 'r' then
    local bms, nb = ring(ck, window)
    local id = floor(now / bms)
    local field = 'b' .. (id % (nb + 1))
    local bid, v = parse_bucket(redis.call('HGET', ck, field))
    if bid == id then
      redis.call('HSET', ck, field, id .. ':' .. (v - value))
      local lp = tonumber(redis.call('HGET', ck, 'lp'))
      if lp and id >= lp - nb and id <= lp then redis.call('HINCRBY', ck, 't', -value) end
    end
  else
    local pid = period(kind)
    if tonumber(redis.call('HGET', ck, 'pid')) == pid then
      redis.call('HINCRBY', ck, 'pv', -value)
    end
  end
end

-- Holds (reserved tokens or cost) whose request died are released here.
local function held(ck, hk, ak, kind, window)
  local c = (kind == 'r') and advance(ck, window) or period_state(ck, kind)
  local gone = redis.call('ZRANGEBYSCORE', hk, '-inf', now, 'LIMIT', 0, 500)
  if #gone > 0 then
    local amounts = redis.call('HMGET', ak, unpack(gone))
    local freed = 0
    for i = 1, #amounts do freed = freed + (tonumber(amounts[i]) or 0) end
    redis.call('ZREM', hk, unpack(gone))
    redis.call('HDEL', ak, unpack(gone))
    c.held = redis.call('HINCRBY', ck, 'held', -freed)
    if c.held < 0 then
      redis.call('HSET', ck, 'held', 0)
      c.held = 0
    end
  end
  return c.held
end

local function release_hold(ck, hk, ak)
  local reserved = tonumber(redis.call('HGET', ak, rid))
  if not reserved then return 0 end
  redis.call('ZREM', hk, rid)
  redis.call('HDEL', ak, rid)
  local left = redis.call('HINCRBY', ck, 'held', -reserved)
  if left < 0 then redis.call('HSET', ck, 'held', 0) end
  if state[ck] then state[ck].held = (left < 0) and 0 or left end
  return reserved
end

local function leases(hk)
  redis.call('ZREMRANGEBYSCORE', hk, '-inf', now)
  return redis.call('ZCARD', hk)
end

-- One report per threshold per window: the marker holds the window it was sent in.
local function crossings(out, i, ck, kind, window, amount, before, after, thresholds, force)
  if thresholds == '' then return end
  local mark
  if kind == 'd' or kind == 'm' then
    mark = period(kind)
  elseif kind == 'r' then
    mark = floor(now / window)
  else
    mark = floor(now / 60000)
  end
  for t in string.gmatch(thresholds, '%d+') do
    local level = tonumber(t) * amount / 100
    if (before < level and after >= level) or (force and tonumber(t) == 100) then
      local field = 'x' .. t
      local last = tonumber(redis.call('HGET', ck, field))
      if last ~= mark then
        redis.call('HSET', ck, field, mark)
        if redis.call('PTTL', ck) == -1 then redis.call('PEXPIRE', ck, 86400000) end
        out[#out + 1] = i
        out[#out + 1] = tonumber(t)
        out[#out + 1] = after
      end
    end
  end
end

local specs = {}
local k = 1
for i = 1, n do
  local kind, window, amount, class, monitor, thresholds, charge = string.match(
    ARGV[5 + i], '^(%a),(%d+),(%d+),(%a),(%d),([%d;]*),(%-?%d+)$')
  local s = {
    kind = kind, window = tonumber(window), amount = tonumber(amount), class = class,
    monitor = monitor == '1', thresholds = thresholds, charge = tonumber(charge),
  }
  if class == 'h' then
    s.ck, s.hk, s.ak = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    k = k + 3
  elseif class == 'c' then
    s.ck, s.hk = KEYS[k], KEYS[k + 1]
    k = k + 2
  else
    s.ck = KEYS[k]
    k = k + 1
  end
  specs[i] = s
end

local result, found = {}, {}

if mode == 'undo' then
  for i = 1, n do
    local s = specs[i]
    if s.class == 'n' then
      undo_committed(s.ck, s.kind, s.window, s.charge)
    elseif s.class == 'h' then
      release_hold(s.ck, s.hk, s.ak)
    else
      redis.call('ZREM', s.hk, rid)
    end
  end
  return {1, 0, 0, now, '#'}
end

if mode == 'settle' then
  for i = 1, n do
    local s = specs[i]
    if s.class == 'c' then
      redis.call('ZREM', s.hk, rid)
    elseif s.class == 'h' then
      local before_held = held(s.ck, s.hk, s.ak, s.kind, s.window)
      local before = committed(s.ck, s.kind, s.window) + before_held
      local reserved = release_hold(s.ck, s.hk, s.ak)
      add_committed(s.ck, s.kind, s.window, s.charge)
      crossings(found, i, s.ck, s.kind, s.window, s.amount, before, before - reserved + s.charge,
                s.thresholds, false)
    end
  end
  result[1] = 1
  result[2] = 0
  result[3] = 0
  result[4] = now
  result[5] = '#'
  for j = 1, #found do result[#result + 1] = found[j] end
  return result
end

-- admit: check every limit, then charge all or none.
local used, resets = {}, {}
local denied, retry = 0, 0
for i = 1, n do
  local s = specs[i]
  local u, reset = 0, 0
  if s.class == 'c' then
    u = leases(s.hk)
    reset = 1000
  else
    u, reset = committed(s.ck, s.kind, s.window)
    if s.class == 'h' then u = u + held(s.ck, s.hk, s.ak, s.kind, s.window) end
  end
  used[i], resets[i] = u, reset
  if denied == 0 and not s.monitor and u + s.charge > s.amount then
    denied = i
    if s.charge > s.amount then
      retry = -1  -- this request alone is larger than the limit
    elseif s.kind == 'r' then
      local need, freed = u + s.charge - s.amount, 0
      local c = state[s.ck]  -- as committed() read it (a clock gone back included)
      local bms, nb = c.bms, c.nb
      local _, b = scan(s.ck, c.cur, nb)
      retry = 1000  -- only holds in the way: they settle soon
      for j = 1, #b do
        freed = freed + b[j][2]
        if freed >= need then
          retry = (b[j][1] + nb + 1) * bms - now
          break
        end
      end
    elseif s.kind == 'd' or s.kind == 'm' then
      retry = reset
    else
      retry = 1000
    end
  end
end

if denied > 0 then
  local s = specs[denied]
  crossings(found, denied, s.ck, s.kind, s.window, s.amount, used[denied], used[denied], s.thresholds, true)
else
  for i = 1, n do
    local s = specs[i]
    if s.class == 'n' then
      add_committed(s.ck, s.kind, s.window, s.charge)
    elseif s.class == 'h' then
      redis.call('ZADD', s.hk, now + lease, rid)
      redis.call('HSET', s.ak, rid, s.charge)
      redis.call('HINCRBY', s.ck, 'held', s.charge)
      -- The counter outlives the holds it counts (else a reaped hold would go negative).
      local ttl = lease * 2
      if s.kind == 'r' then
        ttl = rolling_ttl(s.window)
        redis.call('PEXPIRE', s.ck, ttl)
      elseif period_state(s.ck, s.kind).spid ~= period_state(s.ck, s.kind).pid then
        local _, ends = period(s.kind)
        local until_ms = ends + 86400000
        if now + ttl > until_ms then until_ms = now + ttl end
        redis.call('PEXPIREAT', s.ck, until_ms)
      end
      redis.call('PEXPIRE', s.hk, ttl)
      redis.call('PEXPIRE', s.ak, ttl)
    else
      redis.call('ZADD', s.hk, now + lease, rid)
      redis.call('PEXPIRE', s.hk, lease * 2)
    end
    crossings(found, i, s.ck, s.kind, s.window, s.amount, used[i], used[i] + s.charge, s.thresholds, false)
    used[i] = used[i] + s.charge
  end
end

result[1] = (denied == 0) and 1 or 0
result[2] = denied
result[3] = retry
result[4] = now
for i = 1, n do
  result[#result + 1] = used[i]
  result[#result + 1] = resets[i]
end
result[#result + 1] = '#'
for j = 1, #found do result[#result + 1] = found[j] end
return result
