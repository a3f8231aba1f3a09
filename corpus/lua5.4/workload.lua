-- A deterministic Lua workload for the corpus: one progress line per step, each step
-- exercising the interpreter's tables, strings, closures, coroutines, the GC and
-- error handling through pcall/error (setjmp/longjmp in the C core).
-- STEPS (environment) sets the number of steps; WORK the size of each step.
io.stdout:setvbuf("line")
local steps = tonumber(os.getenv("STEPS") or "") or 60
local work = tonumber(os.getenv("WORK") or "") or 20000

local function fnv(h, s)  -- 32-bit FNV-1a over a string
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

local function gen(n)  -- a coroutine yielding n pseudo-random numbers (LCG)
  return coroutine.wrap(function()
    local x = n
    for _ = 1, n do
      x = (x * 1103515245 + 12345) & 0x7fffffff
      coroutine.yield(x)
    end
  end)
end

local errors_caught = 0
local h = 2166136261
for step = 1, steps do
  local t = {}
  for v in gen(work) do
    t[#t + 1] = v % 100003
  end
  table.sort(t)
  local parts = {}
  for i = 1, #t, 97 do
    parts[#parts + 1] = string.format("%x", t[i])
  end
  local s = table.concat(parts, ",")
  h = fnv(h, s)
  -- error handling: a longjmp out of nested calls, caught by pcall
  local ok, msg = pcall(function()
    local function deep(k)
      if k == 0 then error({code = step}) end
      return deep(k - 1) + 1
    end
    return deep(step % 50 + 10)
  end)
  if not ok and type(msg) == "table" and msg.code == step then
    errors_caught = errors_caught + 1
  end
  local f = 0.0
  for i = 1, 200 do f = f + math.sin(i * step) / i end
  collectgarbage("step", 10)
  print(string.format("step %d hash=%08x sorted=%d errors=%d f=%.6f", step, h, #t,
                      errors_caught, f))
end
print(string.format("done steps=%d hash=%08x", steps, h))
