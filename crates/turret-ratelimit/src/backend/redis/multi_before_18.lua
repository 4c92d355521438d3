local t = redis.call('TIME') local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) 
local n = tonumber(ARGV[1]) local maxd = tonumber(ARGV[2])
local L = {}
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local l = {k = KEYS[i], alg = tonumber(ARGV[b + 1]), a = tonumber(ARGV[b + 2]),
    b = tonumber(ARGV[b + 3]), c = tonumber(ARGV[b + 4]), changed = false}
  if l.alg == 1 then
    l.tat = tonumber(redis.call('GET', l.k) or 0)
  elseif l.alg == 2 then
    l.idx = math.floor(now / l.a) l.count = 0
    local st = redis.call('HMGET', l.k, 'w', 'c')
    if st[1] and tonumber(st[1]) == l.idx then l.count = tonumber(st[2]) end
    l.reset = (l.idx + 1) * l.a - now
  elseif l.alg == 3 then
    l.idx = math.floor(now / l.a) l.prev = 0 l.curr = 0
    local st = redis.call('HMGET', l.k, 'w', 'p', 'c')
    if st[1] then
      local j = tonumber(st[1])
      if j == l.idx then l.prev = tonumber(st[2]) l.curr = tonumber(st[3])
      elseif j + 1 == l.idx then l.prev = tonumber(st[3]) end
    end
    l.left = l.a - (now - l.idx * l.a)
  else
    redis.call('ZREMRANGEBYSCORE', l.k, '-inf', string.format('%.0f', now - l.a))
    l.count = redis.call('ZCARD', l.k)
  end
  L[i] = l
end
-- The decision of one limit for `cost` arriving at `at` (GCRA; the windows decide at now),
-- and the state it would leave, without writing it.
local function check(l, cost, at)
  if l.alg == 1 then
    local t_, tau, count = l.a, l.b, l.c
    local tat = l.tat
    if tat < at then tat = at end
    local new_tat = tat + t_ * cost
    local diff = new_tat - at
    if diff > tau or count == 0 then
      local retry = -1
      if t_ * cost <= tau and count > 0 then retry = diff - tau end
      return {0, math.floor(math.max(tau - (tat - at), 0) / t_), tat - at, retry}
    end
    return {1, math.floor((tau - diff) / t_), diff, -1, new_tat}
  elseif l.alg == 2 then
    local limit = l.b
    if l.count + cost > limit then
      local retry = -1
      if cost <= limit then retry = l.reset end
      return {0, math.max(limit - l.count, 0), l.reset, retry}
    end
    return {1, limit - l.count - cost, l.reset, -1}
  elseif l.alg == 3 then
    local w, limit, prev, curr, left = l.a, l.b, l.prev, l.curr, l.left
    local est_w = prev * left + curr * w
    local admit_w = math.max(limit - cost, 0) * w
    if cost > limit or est_w > admit_w then
      local remaining = math.floor(math.max(limit * w - est_w, 0) / w)
      local retry = -1
      if cost <= limit then
        local need_w = est_w - admit_w
        if prev > 0 and need_w <= prev * left then
          retry = math.ceil(need_w / prev)
        else
          local cap = limit - cost
          local into_next = 0
          if curr > cap then into_next = math.ceil((curr - cap) * w / curr) end
          retry = left + into_next
        end
      end
      local reset = left
      if curr > 0 then reset = left + w end
      return {0, remaining, reset, retry}
    end
    return {1, math.floor((limit * w - est_w - cost * w) / w), left + w, -1}
  else
    local w, limit = l.a, l.b
    if l.count + cost > limit then
      local retry = -1
      if cost <= limit then
        local e = redis.call('ZRANGE', l.k, l.count + cost - limit - 1, l.count + cost - limit - 1, 'WITHSCORES')
        retry = tonumber(e[2]) + w - now
      end
      local last = redis.call('ZRANGE', l.k, -1, -1, 'WITHSCORES')
      local reset = 0
      if last[2] then reset = tonumber(last[2]) + w - now end
      return {0, math.max(limit - l.count, 0), reset, retry}
    end
    return {1, limit - l.count - cost, w, -1}
  end
end
local function commit(l, cost, r)
  l.changed = true
  if l.alg == 1 then l.tat = r[5]
  elseif l.alg == 2 then l.count = l.count + cost
  elseif l.alg == 3 then l.curr = l.curr + cost
  else
    local stamp = string.format('%.0f', now)
    for i = 1, cost do
      redis.call('ZADD', l.k, stamp, stamp .. ':' .. (l.count + i))
    end
    l.count = l.count + cost
  end
end
local out = {}
for j = 3 + 4 * n, #ARGV do
  local cost = tonumber(ARGV[j])
  local at, delay = now, 0
  if maxd > 0 then
    local wait, ok = 0, true
    for i = 1, n do
      local r = check(L[i], cost, now)
      if r[1] == 0 then
        if r[4] < 0 then ok = false elseif r[4] > wait then wait = r[4] end
      end
    end
    if ok and wait <= maxd then at = now + wait delay = wait end
  end
  local rs, all = {}, true
  for i = 1, n do
    rs[i] = check(L[i], cost, at)
    if rs[i][1] == 0 then all = false end
  end
  if all then
    for i = 1, n do commit(L[i], cost, rs[i]) end
  else
    delay = 0
    for i = 1, n do
      rs[i] = check(L[i], cost, now)
      if rs[i][1] == 1 then rs[i] = check(L[i], 0, now) end
    end
  end
  out[#out + 1] = delay
  for i = 1, n do
    local r = rs[i]
    out[#out + 1] = r[1] out[#out + 1] = r[2] out[#out + 1] = r[3] + delay out[#out + 1] = r[4]
  end
end
for i = 1, n do
  local l = L[i]
  if l.changed then
    if l.alg == 1 then
      redis.call('SET', l.k, string.format('%.0f', l.tat), 'PX', math.max(math.ceil((l.tat - now) / 1000) + 1, 1000))
    elseif l.alg == 2 then
      redis.call('HSET', l.k, 'w', string.format('%.0f', l.idx), 'c', l.count)
      redis.call('PEXPIRE', l.k, math.ceil(l.reset / 1000) + 1)
    elseif l.alg == 3 then
      redis.call('HSET', l.k, 'w', string.format('%.0f', l.idx), 'p', l.prev, 'c', l.curr)
      redis.call('PEXPIRE', l.k, math.ceil((l.left + l.a) / 1000) + 1)
    else
      redis.call('PEXPIRE', l.k, math.ceil(l.a / 1000) + 1)
    end
  end
end
return out