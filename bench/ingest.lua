-- wrk script for the ingest benchmark: PUT /messages with a small JSON body.
--
-- Every body is unique ({"bench": <run>, "t": <wrk thread>, "n": <counter>, ...}) so stored
-- rows can be matched to requests, and every 202's id is kept, so the benchmark can check that
-- exactly the accepted messages were stored (no loss, no duplicate). At the end the script
-- writes a JSON summary to $BENCH_OUT.

local threads = {}
local run = os.getenv("BENCH_RUN") or "wrk"
local path = os.getenv("BENCH_PATH") or "/messages"

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

counter = 0
ids = {}
statuses = {}
responses = 0

local headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local body = '{"bench":"' .. run .. '","t":' .. tid .. ',"n":' .. counter
    .. ',"text":"a small JSON document","ok":true,"values":[1,2.5,null]}'
  return wrk.format("PUT", path, headers, body)
end

function response(status, hdrs, body)
  responses = responses + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 202 then
    local id = string.match(body, '"id":"([%x%-]+)"')
    if id then
      ids[#ids + 1] = id
    end
  end
end

local function quote(s)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local sent, answered = 0, 0
  local all_status = {}
  out:write('{"ids":[')
  local first = true
  for _, thread in ipairs(threads) do
    sent = sent + thread:get("counter")
    answered = answered + thread:get("responses")
    for k, v in pairs(thread:get("statuses")) do
      all_status[k] = (all_status[k] or 0) + v
    end
    local tids = thread:get("ids")
    for i = 1, #tids do
      if first then first = false else out:write(",") end
      out:write(quote(tids[i]))
    end
  end
  out:write('],"statuses":{')
  first = true
  for k, v in pairs(all_status) do
    if first then first = false else out:write(",") end
    out:write(quote(k) .. ":" .. v)
  end
  local e = summary.errors
  out:write('},"sent":' .. sent .. ',"answered":' .. answered
    .. ',"requests":' .. summary.requests .. ',"duration_us":' .. summary.duration
    .. ',"errors":{"connect":' .. e.connect .. ',"read":' .. e.read .. ',"write":' .. e.write
    .. ',"status":' .. e.status .. ',"timeout":' .. e.timeout .. '}'
    .. ',"latency_us":{"p50":' .. latency:percentile(50) .. ',"p99":' .. latency:percentile(99)
    .. ',"max":' .. latency.max .. '}}')
  out:close()
end
