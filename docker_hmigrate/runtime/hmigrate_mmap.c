/* Keeps new mappings inside the user address space of every ISA the process may move to.
 *
 * aarch64's user space has 48 bits, x86-64's 47. A process restored on aarch64 (from
 * x86-64) inherits the restorer's mmap base, near the top of the 48 bits, so the
 * kernel's top-down search places every new mapping (malloc's, thread stacks, files)
 * above x86-64's end, and the process could never move back. Reserving the upper half
 * is no way out (CRIU's pagemap cache would want 8 bytes per page of it), and the mmap
 * base is only chosen at exec. So mmap and mremap are wrapped (ld --wrap; musl's malloc,
 * pthread_create and friends call __mmap/__mremap, which are wrapped too): a mapping
 * without an address goes where the kernel puts it, unless that lies above the limit;
 * then it goes to the highest free gap below the limit (and below the main stack's
 * growth reserve), found in /proc/self/maps and taken with MAP_FIXED_NOREPLACE, so it
 * never replaces anything. Once the kernel has done that, later mappings go straight
 * below the last one placed, and the maps are read again only when that spot is taken;
 * growing a mapping (realloc) moves it there when it cannot grow in place.
 *
 * Compiled WITHOUT instrumentation: malloc calls this with its lock held, so it must
 * never be an equivalence point (a parked thread would keep others from parking). Only
 * raw syscalls and lock-free libc calls; no allocation. HMIGRATE_MMAP_LIMIT (an address,
 * for tests) lowers the limit. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOINSTR __attribute__((no_instrument_function))

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_MAYMOVE
#define MREMAP_MAYMOVE 1
#endif
#ifndef MREMAP_FIXED
#define MREMAP_FIXED 2
#endif

/* x86-64's TASK_SIZE with 4-level page tables: the lowest user-space end of the ISAs. */
#define HM_LIMIT 0x7ffffffff000UL
/* Nothing is placed below this (the program, its data and brk heap lie there). */
#define HM_FLOOR (1UL << 32)
/* What the main stack may grow into, as the kernel reserves it (RLIMIT_STACK, at least
 * 128 MiB); bounded so that an unlimited stack does not eat the address space. */
#define HM_STACK_GAP_MIN (128UL << 20)
#define HM_STACK_GAP_MAX (4UL << 30)
/* Room kept around the vDSO and vvar areas: the recode gives them the target kernel's
 * sizes at the same base (x86-64's vvar is larger than aarch64's), and anything placed
 * where they grow would make the move back fail. */
#define HM_SPECIAL_MARGIN (1UL << 20)
#define HM_TRIES 4
#define HM_STACK 1
#define HM_SPECIAL 2

void *__real___mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__real___mremap(void *old, size_t old_len, size_t new_len, int flags, ...);

static unsigned long hm_limit, hm_page;
static volatile unsigned long hm_cursor; /* start of the last mapping placed here */
static volatile int hm_seen_high;        /* the kernel has placed a mapping above the limit */
static unsigned long hm_special_lo, hm_special_hi; /* vDSO and vvar, with their margin */

NOINSTR static void hm_setup(void)
{
	if (hm_page)
		return;
	unsigned long limit = HM_LIMIT;
	const char *p = getenv("HMIGRATE_MMAP_LIMIT");
	if (p && *p) {
		unsigned long v = strtoul(p, 0, 0);
		if (v > HM_FLOOR && v < limit)
			limit = v;
	}
	long page = sysconf(_SC_PAGESIZE);
	hm_limit = limit;
	__atomic_store_n(&hm_page, page > 0 ? (unsigned long)page : 4096UL, __ATOMIC_RELEASE);
}

NOINSTR static unsigned long hm_round(unsigned long len)
{
	return (len + hm_page - 1) & ~(hm_page - 1);
}

NOINSTR static int hm_high(void *p, unsigned long len)
{
	return (unsigned long)p + len > hm_limit;
}

/* Reads /proc/self/maps line by line, calling fn(start, end, kind, arg): kind has
 * HM_STACK for the main stack, HM_SPECIAL for the vDSO and vvar areas ("[v..."). */
NOINSTR static int hm_each_mapping(void (*fn)(unsigned long, unsigned long, int, void *),
				   void *arg)
{
	static const char stack[] = "[stack]";
	char buf[4096];
	unsigned long v[2] = {0, 0};
	int field = 0, matched = 0, found = 0, special = 0;
	char prev = 0;
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	for (;;) {
		long n = syscall(SYS_read, fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (long i = 0; i < n; i++) {
			char c = buf[i];
			if (c == '\n') {
				if (field >= 1)
					fn(v[0], v[1], (matched == (int)sizeof stack - 1 ? HM_STACK : 0) |
					       (special ? HM_SPECIAL : 0), arg);
				found++;
				v[0] = v[1] = 0;
				field = matched = special = 0;
			} else if (field < 2) {
				int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
				if (d >= 0)
					v[field] = v[field] * 16 + (unsigned long)d;
				else
					field++; /* '-' after the start, ' ' after the end */
			} else {
				if (matched < (int)sizeof stack - 1)
					matched = c == stack[matched] ? matched + 1 : c == '[';
				special |= prev == '[' && c == 'v';
			}
			prev = c;
		}
	}
	syscall(SYS_close, fd);
	return found;
}

struct hm_search {
	unsigned long len, ceiling, prev_end, best, stack_end, special_lo, special_hi;
};

NOINSTR static void hm_widen(unsigned long *start, unsigned long *end)
{
	*start = *start > HM_SPECIAL_MARGIN ? *start - HM_SPECIAL_MARGIN : 0;
	*end += HM_SPECIAL_MARGIN;
}

NOINSTR static void hm_find_stack(unsigned long start, unsigned long end, int kind, void *arg)
{
	struct hm_search *s = arg;
	if (kind & HM_STACK)
		s->stack_end = end;
	if (kind & HM_SPECIAL) {
		hm_widen(&start, &end);
		if (!s->special_hi || start < s->special_lo)
			s->special_lo = start;
		if (end > s->special_hi)
			s->special_hi = end;
	}
}

NOINSTR static void hm_try(struct hm_search *s, unsigned long lo, unsigned long hi)
{
	if (hi > lo && hi - lo >= s->len) {
		unsigned long at = (hi - s->len) & ~(hm_page - 1);
		if (at >= lo && at > s->best)
			s->best = at;
	}
}

/* The highest start below the ceiling where len bytes fit in a gap (lines come sorted),
 * outside the vDSO/vvar margin found by the first pass. */
NOINSTR static void hm_fit(unsigned long start, unsigned long end, int kind, void *arg)
{
	struct hm_search *s = arg;
	(void)kind;
	unsigned long lo = s->prev_end > HM_FLOOR ? s->prev_end : HM_FLOOR;
	unsigned long hi = start < s->ceiling ? start : s->ceiling;
	if (s->special_hi && lo < s->special_hi && hi > s->special_lo) {
		hm_try(s, lo, hi < s->special_lo ? hi : s->special_lo);
		hm_try(s, lo > s->special_hi ? lo : s->special_hi, hi);
	} else {
		hm_try(s, lo, hi);
	}
	if (end > s->prev_end)
		s->prev_end = end;
}

/* A free start for len bytes below the limit, or 0. */
NOINSTR static unsigned long hm_find_gap(unsigned long len)
{
	struct hm_search s = {len, hm_limit, 0, 0, 0, 0, 0};
	if (hm_each_mapping(hm_find_stack, &s) < 0)
		return 0;
	hm_special_lo = s.special_lo;
	hm_special_hi = s.special_hi;
	if (s.stack_end) {
		struct rlimit rl;
		unsigned long gap = HM_STACK_GAP_MIN;
		if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur > gap)
			gap = rl.rlim_cur < HM_STACK_GAP_MAX ? rl.rlim_cur : HM_STACK_GAP_MAX;
		if (s.stack_end > HM_FLOOR + gap && s.stack_end - gap < s.ceiling)
			s.ceiling = (s.stack_end - gap) & ~(hm_page - 1);
	}
	if (hm_each_mapping(hm_fit, &s) < 0)
		return 0;
	hm_fit(s.ceiling, s.ceiling, 0, &s); /* the gap above the last mapping */
	return s.best;
}

/* Maps at a free spot below the limit: just below the last one placed, else the highest
 * gap that fits; MAP_FAILED if there is none. */
NOINSTR static void *hm_place_low(unsigned long len, int prot, int flags, int fd, off_t off)
{
	unsigned long cursor = hm_cursor;
	for (int i = 0; i <= HM_TRIES; i++) {
		unsigned long spot;
		if (i == 0) {
			spot = cursor - len;
			if (cursor <= HM_FLOOR + len || (spot < hm_special_hi && cursor > hm_special_lo))
				continue;
		} else if (!(spot = hm_find_gap(len))) {
			break;
		}
		void *p = __real___mmap((void *)spot, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
		if (p == MAP_FAILED) {
			if (errno == EEXIST)
				continue; /* taken (by another thread meanwhile): look again */
			break;
		}
		if (!hm_high(p, len)) {
			hm_cursor = (unsigned long)p;
			return p;
		}
		syscall(SYS_munmap, p, len); /* a kernel that ignores MAP_FIXED_NOREPLACE */
	}
	return MAP_FAILED;
}

/* Placed by the kernel as asked: an address, or a constraint of its own (x86-64's
 * MAP_32BIT, huge pages' alignment). */
#ifndef MAP_32BIT
#define MAP_32BIT 0
#endif
#define HM_KERNEL_PLACES (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_32BIT | MAP_HUGETLB)

NOINSTR void *__wrap___mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (addr || (flags & HM_KERNEL_PLACES) || !len)
		return __real___mmap(addr, len, prot, flags, fd, off);
	hm_setup();
	unsigned long rlen = hm_round(len);
	int saved = errno;
	if (hm_seen_high) {
		/* This kernel places mappings too high: do not even ask it. */
		void *q = hm_place_low(rlen, prot, flags, fd, off);
		errno = saved;
		if (q != MAP_FAILED)
			return q;
	}
	void *p = __real___mmap(0, len, prot, flags, fd, off);
	if (p == MAP_FAILED || !hm_high(p, rlen))
		return p;
	hm_seen_high = 1;
	saved = errno;
	void *q = hm_place_low(rlen, prot, flags, fd, off);
	errno = saved;
	if (q == MAP_FAILED)
		return p; /* the program first: a move back will be refused, naming it */
	syscall(SYS_munmap, p, rlen);
	return q;
}

NOINSTR void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return __wrap___mmap(addr, len, prot, flags, fd, off);
}

NOINSTR void *__wrap_mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return __wrap___mmap(addr, len, prot, flags, fd, off);
}

/* A mapping that must move to grow (MREMAP_MAYMOVE) moves onto a reservation of a spot
 * below the limit (MREMAP_FIXED replaces it); one the kernel moved above the limit moves
 * again, the same way. */
NOINSTR static void *hm_move_low(void *old, unsigned long len, unsigned long new_len)
{
	void *spot = hm_place_low(hm_round(new_len), PROT_NONE,
				  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (spot == MAP_FAILED)
		return MAP_FAILED;
	void *q = __real___mremap(old, len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
	if (q == MAP_FAILED)
		syscall(SYS_munmap, spot, hm_round(new_len));
	return q;
}

NOINSTR void *__wrap___mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *want = 0;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		want = va_arg(ap, void *);
		va_end(ap);
	}
	if (flags != MREMAP_MAYMOVE) /* in place, at a given address, or MREMAP_DONTUNMAP */
		return __real___mremap(old, old_len, new_len, flags, want);
	hm_setup();
	int saved = errno;
	if (hm_seen_high && new_len > old_len) {
		void *p = __real___mremap(old, old_len, new_len, 0);
		if (p == MAP_FAILED)
			p = hm_move_low(old, old_len, new_len);
		errno = saved;
		if (p != MAP_FAILED)
			return p;
	}
	void *p = __real___mremap(old, old_len, new_len, flags);
	if (p == MAP_FAILED || !hm_high(p, hm_round(new_len)))
		return p;
	hm_seen_high = 1;
	saved = errno;
	void *q = hm_move_low(p, new_len, new_len);
	errno = saved;
	return q == MAP_FAILED ? p : q;
}

NOINSTR void *__wrap_mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *want = 0;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		want = va_arg(ap, void *);
		va_end(ap);
	}
	return __wrap___mremap(old, old_len, new_len, flags, want);
}
