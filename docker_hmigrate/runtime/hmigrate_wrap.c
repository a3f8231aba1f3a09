/* Wrappers (ld --wrap) for blocking calls that would otherwise keep a thread away
 * from equivalence points: libc retries futex waits on EINTR internally, and
 * sleeps should keep their length across a park. Compiled like user code (-O0,
 * instrumented) so their frames are clean and translatable. */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "hmigrate_rt.h"

#define POLL_NS (100 * 1000 * 1000)

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

int __wrap_pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
	/* musl keeps the condition variable's clock in __u.__i[4] (pthread_condattr_setclock). */
	clockid_t clk = (clockid_t)c->__u.__i[4];
	for (;;) {
		struct timespec at;
		deadline(clk, &at);
		int slot = hmigrate_cond_register(c);
		int r = pthread_cond_timedwait(c, m, &at);
		hmigrate_cond_unregister(slot);
		if (r != ETIMEDOUT && r != 0)
			return r;
		if (hmigrate_requested()) {
			/* Park without the mutex (others may need it to reach their points), then
			 * report a (possibly spurious) wakeup, which POSIX allows. */
			pthread_mutex_unlock(m);
			hmigrate_poll();
			pthread_mutex_lock(m);
			return 0;
		}
		if (r == 0)
			return 0;
	}
}
