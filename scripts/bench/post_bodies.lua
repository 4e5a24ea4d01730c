-- wrk script for scripts/bench.py: POST pre-generated form bodies to /token.
--
-- Usage: wrk ... -s post_bodies.lua <url> -- <bodies-prefix> <once|cycle>
-- Thread i reads "<prefix>.<i>.txt" (one urlencoded body per line), so every single-use
-- assertion is sent exactly once ("once"); "cycle" loops over the file (rejection scenarios,
-- where nothing is consumed). When a "once" thread runs out it stops and reports it: reusing
-- an assertion would turn the run into a replay test.
-- done() prints one line "BENCH_JSON {...}" with status counts and latency percentiles (µs).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  table.insert(threads, thread)
  next_id = next_id + 1
end

function init(args)
  local prefix, mode_arg = args[1], args[2]
  mode = mode_arg or "once"
  bodies = {}
  proofs = {}  -- the dpop scenario: a line is "<body>\t<DPoP proof>"
  for line in io.lines(prefix .. "." .. tid .. ".txt") do
    local tab = string.find(line, "\t", 1, true)
    if tab then
      proofs[#bodies + 1] = string.sub(line, tab + 1)
      line = string.sub(line, 1, tab - 1)
    end
    bodies[#bodies + 1] = line
  end
  idx = 0
  exhausted = 0
  statuses = {}
  headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  dpop_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  idle = wrk.format("GET", "/jwks.json")  -- a cheap public GET (health is on the management port)
end

function request()
  idx = idx + 1
  if idx > #bodies then
    if mode == "cycle" then
      idx = 1
    else
      exhausted = 1
      wrk.thread:stop()
      return idle
    end
  end
  local proof = proofs[idx]
  if proof then
    dpop_headers["DPoP"] = proof
    return wrk.format("POST", "/token", dpop_headers, bodies[idx])
  end
  return wrk.format("POST", "/token", headers, bodies[idx])
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local agg, ex = {}, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do agg[k] = (agg[k] or 0) + v end
    ex = ex + (t:get("exhausted") or 0)
  end
  local parts = {}
  for k, v in pairs(agg) do parts[#parts + 1] = string.format('"%d":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},"statuses":{%s},"exhausted_threads":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, table.concat(parts, ","), ex))
end
