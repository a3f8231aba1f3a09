/* Equivalence-point runtime. Compiled WITHOUT -finstrument-functions: it is the
 * instrumentation. Only raw syscalls are used once a thread parks, because other
 * parked threads may hold libc locks. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hmigrate_rt.h"

#define NOINSTR __attribute__((no_instrument_function))
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129

struct hmigrate_state hmigrate_state = {
	.sig_park = HMIGRATE_SIGPARK,
	.sig_resume = HMIGRATE_SIGRESUME,
	.path = HMIGRATE_DEFAULT_FILE,
};

/* In .data (not .bss) so the bytes exist in the file for hmigrate-cc to patch. */
__attribute__((section(".data.hmigrate_unclean"))) struct hmigrate_unclean hmigrate_unclean = {
	.magic = HMIGRATE_UNCLEAN_MAGIC,
};


NOINSTR int hmigrate_requested(void) { return __atomic_load_n(&hmigrate_state.request, __ATOMIC_SEQ_CST); }
NOINSTR int hmigrate_generation(void) { return __atomic_load_n(&hmigrate_state.generation, __ATOMIC_SEQ_CST); }

NOINSTR static int hm_gettid(void) { return (int)syscall(SYS_gettid); }

NOINSTR static int hm_is_parked(int tid)
{
	for (int i = 0; i < HMIGRATE_MAX_THREADS; i++)
		if (hmigrate_state.tids[i] == tid)
			return 1;
	return 0;
}

/* Calls fn(tid, arg) for every thread of the process; returns the thread count. */
NOINSTR static int hm_for_each_task(void (*fn)(int, void *), void *arg)
{
	char buf[4096];
	int n = 0;
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (;;) {
		long len = syscall(SYS_getdents64, fd, buf, sizeof buf);
		if (len <= 0)
			break;
		for (long off = 0; off < len;) {
			unsigned short reclen = *(unsigned short *)(buf + off + 16);
			const char *name = buf + off + 19;
			if (name[0] >= '0' && name[0] <= '9') {
				n++;
				if (fn)
					fn(atoi(name), arg);
			}
			off += reclen;
		}
	}
	syscall(SYS_close, fd);
	return n;
}

NOINSTR static void hm_kick(int tid, void *self)
{
	/* Interrupts a blocking syscall so the thread reaches an equivalence point. */
	if (tid != *(int *)self && !hm_is_parked(tid))
		syscall(SYS_tgkill, (int)syscall(SYS_getpid), tid, hmigrate_state.sig_park);
}

NOINSTR static void hm_append(char *buf, size_t *len, size_t cap, const char *s)
{
	while (*s && *len + 1 < cap)
		buf[(*len)++] = *s++;
	buf[*len] = 0;
}

NOINSTR static void hm_utoa(unsigned v, char *out)
{
	char tmp[16];
	int i = 0;
	do {
		tmp[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (int j = 0; j < i; j++)
		out[j] = tmp[i - 1 - j];
	out[i] = 0;
}

NOINSTR static int hm_write_file(const char *path, const char *text, size_t len)
{
	char tmp[300];
	size_t n = 0;
	hm_append(tmp, &n, sizeof tmp, path);
	hm_append(tmp, &n, sizeof tmp, ".tmp");
	int fd = (int)syscall(SYS_openat, AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	syscall(SYS_write, fd, text, len);
	syscall(SYS_close, fd);
	return (int)syscall(SYS_renameat, AT_FDCWD, tmp, AT_FDCWD, path);
}

/* Announce once every thread of the process is parked. */
NOINSTR static void hm_maybe_announce(void)
{
	struct hmigrate_state *s = &hmigrate_state;
	if (!hmigrate_requested() || s->announced)
		return;
	if (__atomic_exchange_n(&s->announcing, 1, __ATOMIC_ACQUIRE))
		return;
	int tasks = hm_for_each_task(0, 0) - s->foreign_tasks;
	if (tasks > 0 && tasks == __atomic_load_n(&s->parked, __ATOMIC_SEQ_CST) && hmigrate_requested()) {
		char text[8192], num[16];
		size_t n = 0;
		hm_utoa((unsigned)tasks, num);
		hm_append(text, &n, sizeof text, "threads=");
		hm_append(text, &n, sizeof text, num);
		hm_utoa((unsigned)syscall(SYS_getpid), num);
		hm_append(text, &n, sizeof text, "\npid=");
		hm_append(text, &n, sizeof text, num);
		hm_append(text, &n, sizeof text, "\ntids=");
		int first = 1;
		for (int i = 0; i < HMIGRATE_MAX_THREADS; i++) {
			int t = s->tids[i];
			if (!t)
				continue;
			if (!first)
				hm_append(text, &n, sizeof text, ",");
			hm_utoa((unsigned)t, num);
			hm_append(text, &n, sizeof text, num);
			first = 0;
		}
		hm_append(text, &n, sizeof text, "\n");
		if (hm_write_file(s->path, text, n) == 0)
			s->announced = 1;
	}
	__atomic_store_n(&s->announcing, 0, __ATOMIC_RELEASE);
}

/* The wait of a parked thread, as a raw syscall in a function of its own (no libc frame
 * on top of a parked stack): its PC while blocked is recorded in the metadata. */
NOINSTR __attribute__((noinline)) long hm_futex_wait(volatile int *addr, int val, const struct timespec *ts)
{
#if defined(__x86_64__)
	register long r10 __asm__("r10") = (long)ts;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((long)SYS_futex), "D"(addr), "S"((long)FUTEX_WAIT_PRIVATE), "d"((long)val), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = SYS_futex;
	register long x0 __asm__("x0") = (long)addr;
	register long x1 __asm__("x1") = FUTEX_WAIT_PRIVATE;
	register long x2 __asm__("x2") = val;
	register long x3 __asm__("x3") = (long)ts;
	__asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
	return x0;
#else
	return syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, ts, 0, 0);
#endif
}

/* Park the calling thread until the request is withdrawn. Frames below are clean. */
NOINSTR __attribute__((noinline)) void hmigrate_park(void *fn, void *site)
{
	struct hmigrate_state *s = &hmigrate_state;
	int self = hm_gettid(), slot = -1;
	(void)fn;
	(void)site;
	for (int i = 0; i < HMIGRATE_MAX_THREADS && slot < 0; i++) {
		int zero = 0;
		if (__atomic_compare_exchange_n(&s->tids[i], &zero, self, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			slot = i;
	}
	__atomic_add_fetch(&s->parked, 1, __ATOMIC_SEQ_CST);
	hm_maybe_announce();
	while (hmigrate_requested()) {
		struct timespec ts = {0, 200 * 1000 * 1000};
		/* Once every thread is parked and that is announced, wait without a timeout: a
		 * checkpoint must find each thread inside this futex wait, never between two. */
		hm_futex_wait(&s->request, 1, s->announced ? 0 : &ts);
		if (hmigrate_requested()) {
			/* A thread may have slipped into a blocking call after the first kick. */
			hm_for_each_task(hm_kick, &self);
			hm_maybe_announce();
		}
	}
	if (slot >= 0)
		s->tids[slot] = 0;
	__atomic_sub_fetch(&s->parked, 1, __ATOMIC_SEQ_CST);
}

extern const char __executable_start[], __etext[]; /* from the generated linker script */

NOINSTR static int hm_is_unclean(unsigned long pc)
{
	unsigned long lo = 0, hi = hmigrate_unclean.count;
	while (lo < hi) {
		unsigned long mid = (lo + hi) / 2;
		if (pc < hmigrate_unclean.range[2 * mid])
			hi = mid;
		else if (pc >= hmigrate_unclean.range[2 * mid + 1])
			lo = mid + 1;
		else
			return 1;
	}
	return 0;
}

/* Walks the frame-pointer chain (every instrumented frame has one; the record is
 * {saved fp, return address} on both ISAs) looking for an untranslatable frame; returns
 * the return address into it (0: none). */
NOINSTR static unsigned long hm_unclean_walk(int outermost)
{
	if (!hmigrate_unclean.count)
		return 0;
	unsigned long found = 0;
	void **fp = __builtin_frame_address(0);
	for (int depth = 0; fp && depth < 100000; depth++) {
		void **next = (void **)fp[0];
		unsigned long ra = (unsigned long)fp[1];
		if (ra <= (unsigned long)__executable_start || ra > (unsigned long)__etext)
			break; /* left our code: a libc bottom frame or the end of the chain */
		if (hm_is_unclean(ra - 1)) {
			found = ra;
			if (!outermost)
				return ra;
		}
		if (next <= fp || (unsigned long)((char *)next - (char *)fp) > (64ul << 20))
			break;
		fp = next;
	}
	return found;
}

NOINSTR static unsigned long hm_unclean_on_stack(void)
{
	return hm_unclean_walk(0);
}

/* The equivalence point: at function entry all arguments are already in their stack
 * slots and no callee-saved register holds an unknown value (see docs/toolchain.md). */
NOINSTR static void hm_blocked_path(char *out, size_t cap)
{
	size_t n = 0;
	hm_append(out, &n, cap, hmigrate_state.path);
	hm_append(out, &n, cap, ".blocked");
}

/* Says (once per request) which untranslatable frame keeps this thread from parking:
 * the outermost one on its stack, which stays longest (zstd: an inlined matcher at the
 * top for microseconds, a by-value aggregate's frame below it for a whole file). */
NOINSTR static void hm_report_blocked(unsigned long ra)
{
	struct hmigrate_state *s = &hmigrate_state;
	s->blocked_ra = ra;
	if (__atomic_exchange_n(&s->blocked_written, 1, __ATOMIC_SEQ_CST))
		return;
	ra = hm_unclean_walk(1);
	char path[300], text[128], num[24];
	size_t n = 0;
	hm_blocked_path(path, sizeof path);
	hm_append(text, &n, sizeof text, "tid=");
	hm_utoa((unsigned)hm_gettid(), num);
	hm_append(text, &n, sizeof text, num);
	hm_append(text, &n, sizeof text, "\nra=0x");
	int i = 0;
	for (int shift = 60; shift >= 0; shift -= 4) {
		int d = (int)((ra >> shift) & 15);
		if (d || i || !shift)
			num[i++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
	}
	num[i] = 0;
	hm_append(text, &n, sizeof text, num);
	hm_append(text, &n, sizeof text, "\n");
	hm_write_file(path, text, n);
}

NOINSTR void __cyg_profile_func_enter(void *fn, void *site)
{
	if (__builtin_expect(hmigrate_state.request, 0)) {
		unsigned long ra = hm_unclean_on_stack();
		if (!ra)
			hmigrate_park(fn, site);
		else
			hm_report_blocked(ra);
	}
}

NOINSTR void __cyg_profile_func_exit(void *fn, void *site)
{
	(void)fn;
	(void)site;
}

NOINSTR static void hm_on_park(int sig)
{
	int saved = errno;
	(void)sig;
	__atomic_add_fetch(&hmigrate_state.generation, 1, __ATOMIC_SEQ_CST);
	if (__atomic_exchange_n(&hmigrate_state.request, 1, __ATOMIC_SEQ_CST) == 0) {
		int self = hm_gettid();
		hm_for_each_task(hm_kick, &self);
	}
	errno = saved;
}

NOINSTR static void hm_on_resume(int sig)
{
	int saved = errno;
	(void)sig;
	__atomic_add_fetch(&hmigrate_state.generation, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&hmigrate_state.request, 0, __ATOMIC_SEQ_CST);
	if (hmigrate_state.announced) {
		syscall(SYS_unlinkat, AT_FDCWD, hmigrate_state.path, 0);
		hmigrate_state.announced = 0;
	}
	if (__atomic_exchange_n(&hmigrate_state.blocked_written, 0, __ATOMIC_SEQ_CST)) {
		char path[300];
		hm_blocked_path(path, sizeof path);
		syscall(SYS_unlinkat, AT_FDCWD, path, 0);
	}
	syscall(SYS_futex, &hmigrate_state.request, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
	errno = saved;
}

NOINSTR __attribute__((constructor)) static void hm_init(void)
{
	struct hmigrate_state *s = &hmigrate_state;
	const char *p = getenv("HMIGRATE_FOREIGN_TASKS");
	/* qemu-user shows its own helper thread in /proc/self/task: it never parks. */
	if (p)
		s->foreign_tasks = atoi(p);
	p = getenv("HMIGRATE_PARK_FILE");
	if (p && *p && strlen(p) < sizeof s->path - 8) {
		strcpy(s->path, p);
	} else {
		/* /run/hmigrate/parked when we may create it, else /tmp/.hmigrate-parked. */
		mkdir("/run", 0755);
		mkdir("/run/hmigrate", 0755);
		if (access("/run/hmigrate", W_OK) != 0)
			strcpy(s->path, HMIGRATE_FALLBACK_FILE);
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: blocked syscalls must return so threads can park */
	sa.sa_handler = hm_on_park;
	sigaction(s->sig_park, &sa, 0);
	sa.sa_handler = hm_on_resume;
	sigaction(s->sig_resume, &sa, 0);
}
