-- wrk script for benchmarks/run.py: after wrk's own summary, one machine-readable line
-- ("WRK-JSON {...}") with the totals and latency percentiles (microseconds).
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "\nWRK-JSON {\"duration_us\":%d,\"requests\":%d,\"bytes\":%d," ..
      "\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}," ..
      "\"latency_us\":{\"mean\":%.1f,\"max\":%d,\"p50\":%d,\"p90\":%d,\"p99\":%d}}\n",
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99)))
end
