-- wrk script of the benchmark: counts the responses of each worker (every
-- contender answers `worker <id> pid <pid>`) and prints one machine-readable
-- line at the end:
--   BENCH_JSON {"requests":..,"duration_us":..,"errors":{..},"latency_us":{..},"workers":{"<id> pid <pid>":n,..}}
-- Each wrk thread counts in its own Lua state; done() adds them up.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  bad_status = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
  end
  local key = body and body:match("^worker (%d+ pid %d+)") or "other"
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("counts")) do
      merged[key] = (merged[key] or 0) + n
    end
  end
  local workers = {}
  for key, n in pairs(merged) do
    table.insert(workers, string.format('"%s":%d', key, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
    '"workers":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    table.concat(workers, ",")))
end
