/* Wrappers (ld --wrap) for blocking calls that would otherwise keep a thread away
 * from equivalence points: libc retries futex waits on EINTR internally, and
 * sleeps should keep their length across a park. Compiled like user code (-O0,
 * instrumented) so their frames are clean and translatable. */
#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hmigrate_rt.h"

#define POLL_NS (50 * 1000 * 1000)
#define FUTEX_WAIT_PRIVATE 128
#define FUTEX_WAKE_PRIVATE 129

int __real_nanosleep(const struct timespec *req, struct timespec *rem);

/* Empty on purpose: the entry hook parks the thread here when requested. */
void hmigrate_poll(void)
{
}

static void deadline(clockid_t clk, struct timespec *at)
{
	clock_gettime(clk, at);
	at->tv_nsec += POLL_NS;
	if (at->tv_nsec >= 1000000000L) {
		at->tv_nsec -= 1000000000L;
		at->tv_sec += 1;
	}
}

int __wrap_nanosleep(const struct timespec *req, struct timespec *rem)
{
	struct timespec left = *req;
	for (;;) {
		int gen = hmigrate_generation();
		int r = __real_nanosleep(&left, &left);
		if (r == 0)
			return 0;
		if (errno != EINTR || (!hmigrate_requested() && gen == hmigrate_generation())) {
			if (rem)
				*rem = left;
			return r; /* the caller's own signal: report it as libc would */
		}
		hmigrate_poll();
	}
}

unsigned __wrap_sleep(unsigned seconds)
{
	struct timespec ts = {seconds, 0};
	if (__wrap_nanosleep(&ts, &ts) == 0)
		return 0;
	return (unsigned)ts.tv_sec + (ts.tv_nsec > 0);
}

int __wrap_usleep(unsigned usec)
{
	struct timespec ts = {usec / 1000000, (long)(usec % 1000000) * 1000};
	return __wrap_nanosleep(&ts, &ts);
}

int __wrap_pthread_join(pthread_t t, void **res)
{
	for (;;) {
		struct timespec at;
		deadline(CLOCK_REALTIME, &at);
		int r = pthread_timedjoin_np(t, res, &at);
		if (r != ETIMEDOUT)
			return r;
		hmigrate_poll();
	}
}

/* Waiting for a mutex whose holder is parked must not keep this thread from parking:
 * wait in slices and offer an equivalence point in between. Only user code reaches
 * this wrapper in practice (libc calls it from aio, and from its condition variables,
 * which the wrappers below keep threads out of). */
int __wrap_pthread_mutex_lock(pthread_mutex_t *m)
{
	int r = pthread_mutex_trylock(m);
	if (r != EBUSY)
		return r;
	for (;;) {
		struct timespec at;
		deadline(CLOCK_REALTIME, &at);
		r = pthread_mutex_timedlock(m, &at);
		if (r != ETIMEDOUT)
			return r;
		hmigrate_poll();
	}
}

/* Condition variables. A thread waiting inside libc's condition variable cannot leave
 * it without relocking the mutex, which a parked thread may hold; so waiters never
 * enter libc's: they wait on one process-wide futex word that every signal or
 * broadcast bumps. Waiters wake on any signal (a spurious wakeup, which POSIX allows;
 * callers re-check their predicate) and park with the mutex released. */
int __real_pthread_cond_signal(pthread_cond_t *c);
int __real_pthread_cond_broadcast(pthread_cond_t *c);

static volatile int cond_seq;

static void cond_bump(void)
{
	__atomic_add_fetch(&cond_seq, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &cond_seq, FUTEX_WAKE_PRIVATE, 0x7fffffff, 0, 0, 0);
}

int __wrap_pthread_cond_signal(pthread_cond_t *c)
{
	cond_bump();
	return __real_pthread_cond_signal(c); /* for libc-internal waiters (aio) */
}

int __wrap_pthread_cond_broadcast(pthread_cond_t *c)
{
	cond_bump();
	return __real_pthread_cond_broadcast(c);
}

static long ns_until(clockid_t clk, const struct timespec *at)
{
	struct timespec now;
	clock_gettime(clk, &now);
	return (at->tv_sec - now.tv_sec) * 1000000000L + (at->tv_nsec - now.tv_nsec);
}

static int cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *at)
{
	/* musl keeps the condition variable's clock in __u.__i[4] (pthread_condattr_setclock). */
	clockid_t clk = (clockid_t)c->__u.__i[4];
	int seq = __atomic_load_n(&cond_seq, __ATOMIC_SEQ_CST);
	int r = 0;
	if (at && (at->tv_nsec < 0 || at->tv_nsec >= 1000000000L))
		return EINVAL;
	pthread_mutex_unlock(m);
	while (__atomic_load_n(&cond_seq, __ATOMIC_SEQ_CST) == seq && !hmigrate_requested()) {
		long left = at ? ns_until(clk, at) : POLL_NS;
		if (left <= 0) {
			r = ETIMEDOUT;
			break;
		}
		if (left > POLL_NS)
			left = POLL_NS;
		struct timespec ts = {left / 1000000000L, left % 1000000000L};
		syscall(SYS_futex, &cond_seq, FUTEX_WAIT_PRIVATE, seq, &ts, 0, 0);
	}
	hmigrate_poll(); /* equivalence point, without the mutex */
	pthread_mutex_lock(m);
	return r;
}

int __wrap_pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
	return cond_wait_until(c, m, 0);
}

int __wrap_pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *at)
{
	return cond_wait_until(c, m, at);
}
