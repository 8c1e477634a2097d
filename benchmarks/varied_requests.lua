-- wrk script for `compare.py --tools wrk-varied`: every request carries a new query
-- string, so no request repeats the one before it byte for byte on any connection
-- and zcserve's repeat shortcuts never apply. The query does not change the file.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", wrk.path .. "?n=" .. n)
end
