-- A circuit breaker per provider, shared by every worker (Redis server time).
-- KEYS[1] = the breaker's hash, KEYS[2] = the half-open probe's key.
-- ARGV[1] = "allow" | "success" | "failure", ARGV[2] = failures to open, ARGV[3] = pause ms.
-- Answers {verdict, ms[, failures]}: verdict 1 = closed (call; with the failures counted
-- so far), 2 = half-open probe (call), 0 = open (do not call; ms until a probe may go).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local pause = tonumber(ARGV[3])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')

if mode == 'allow' then
  if open_until == 0 then return {1, 0, tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')} end
  if now < open_until then return {0, open_until - now} end
  if redis.call('SET', KEYS[2], '1', 'NX', 'PX', pause) then return {2, 0} end
  return {0, redis.call('PTTL', KEYS[2])}
elseif mode == 'success' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {1, 0}
else
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HSET', KEYS[1], 'last_failure', now)
  -- Open after the threshold; a failed half-open probe opens it again at once.
  if failures >= tonumber(ARGV[2]) or open_until > 0 then
    redis.call('HSET', KEYS[1], 'open_until', now + pause)
    if open_until == 0 then redis.call('HSET', KEYS[1], 'opened_at', now) end
    redis.call('DEL', KEYS[2])
    return {0, pause}
  end
  return {1, 0}
end
