-- wrk script for bench/disk.sh: each request picks one of N objects uniformly at random.
--   wrk -t1 -c64 -d10s --latency -s random.lua http://127.0.0.1:PORT -- N PREFIX
-- URLs are PREFIX1 .. PREFIXN (PREFIX default "/mem/ws/"). The N requests are formatted
-- once per thread in init(), so the per-request cost in the client is one table lookup.
local reqs = {}
local n = 0

function init(args)
  n = tonumber(args[1]) or 0
  local prefix = args[2] or "/mem/ws/"
  if n < 1 then
    error("random.lua: give the number of objects after --")
  end
  for i = 1, n do
    reqs[i] = wrk.format("GET", prefix .. i)
  end
  math.randomseed(os.time())
end

function request()
  return reqs[math.random(n)]
end
