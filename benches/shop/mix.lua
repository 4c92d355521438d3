-- The tutorials' read mix: product pages, product lists, categories, top-selling.
math.randomseed(42)
request = function()
  local r = math.random(100)
  local path
  if r <= 50 then
    path = "/products/" .. math.random(1, 1000)
  elseif r <= 80 then
    path = "/products?skip=" .. (math.random(0, 9) * 20) .. "&limit=20"
  elseif r <= 95 then
    path = "/categories"
  else
    path = "/products/top-selling?limit=10"
  end
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  for _, p in ipairs({50, 95, 99, 99.9}) do
    io.write(string.format("p%g %.2f ms\n", p, latency:percentile(p) / 1000))
  end
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
