# A deterministic mawk workload: one progress line per step. Associative arrays,
# string functions (split, sub, gsub, sprintf, substr), regular expressions, user
# functions with recursion, floating point. STEPS and WORK from the environment.
function lcg(x) { return (x * 1103515245 + 12345) % 2147483648 }
function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }
function fnv(h, s,    i, c) {
  for (i = 1; i <= length(s); i++) {
    c = index("0123456789abcdefghijklmnopqrstuvwxyz,", substr(s, i, 1))
    h = (h * 31 + c) % 4294967291
  }
  return h
}
BEGIN {
  steps = ENVIRON["STEPS"] + 0; if (steps <= 0) steps = 60
  work = ENVIRON["WORK"] + 0; if (work <= 0) work = 20000
  h = 7; x = 1
  for (step = 1; step <= steps; step++) {
    delete count
    for (i = 0; i < work; i++) {
      x = lcg(x)
      k = sprintf("%x", x % 4099)
      count[k]++
    }
    n = 0; s = ""
    for (k in count) if (count[k] > 5) n++
    for (i = 0; i < 4099; i += 37) {
      k = sprintf("%x", i)
      s = s "," k ":" (k in count ? count[k] : 0)
    }
    t = s; m = gsub(/[0-9]+:1[0-9]?,/, "#", t)
    h = fnv(h, s)
    f = 0; for (i = 1; i <= 200; i++) f += sin(i * step) / i
    printf "step %d hash=%.0f over5=%d gsub=%d fib=%d f=%.6f\n", step, h, n, m, fib(step % 15 + 5), f
    fflush()
  }
  printf "done steps=%d hash=%.0f\n", steps, h
}
