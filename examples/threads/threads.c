/* Multi-threaded test program for equivalence points and migration.
 * Each worker advances its own generator state (held in locals, TLS and a shared
 * array) for a fixed number of steps, sleeping between steps; the final result
 * combines every thread's state, and the program checks it against a sequential
 * recomputation. Usage: threads [NTHREADS] [STEPS] [STEP_MS] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 16

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress = PTHREAD_COND_INITIALIZER;
static long done_steps;
static uint64_t states[MAX_THREADS];
static __thread uint64_t tls_mix;
static int nsteps = 100, step_ms = 20;

static uint64_t step(uint64_t x, int id)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x + (uint64_t)id;
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
	tls_mix = (uint64_t)id;
	for (int i = 0; i < nsteps; i++) {
		x = step(x, id);
		tls_mix = tls_mix * 31 + (x & 0xff);
		usleep((unsigned)step_ms * 1000);
		pthread_mutex_lock(&lock);
		done_steps++;
		pthread_cond_signal(&progress);
		pthread_mutex_unlock(&lock);
	}
	states[id] = x ^ tls_mix;
	return 0;
}

static uint64_t expected(int n)
{
	uint64_t r = 0;
	for (int id = 0; id < n; id++) {
		uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1), mix = (uint64_t)id;
		for (int i = 0; i < nsteps; i++) {
			x = step(x, id);
			mix = mix * 31 + (x & 0xff);
		}
		r = r * 1000003 + (x ^ mix);
	}
	return r;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 4;
	pthread_t t[MAX_THREADS];
	if (argc > 2)
		nsteps = atoi(argv[2]);
	if (argc > 3)
		step_ms = atoi(argv[3]);
	if (n < 1 || n > MAX_THREADS)
		n = 4;
	for (int i = 0; i < n; i++)
		pthread_create(&t[i], 0, worker, (void *)(intptr_t)i);
	long total = (long)n * nsteps, last = -1;
	pthread_mutex_lock(&lock);
	while (done_steps < total) {
		pthread_cond_wait(&progress, &lock);
		if (done_steps / 50 != last / 50) {
			printf("progress %ld/%ld\n", done_steps, total);
			fflush(stdout);
		}
		last = done_steps;
	}
	pthread_mutex_unlock(&lock);
	uint64_t r = 0;
	for (int i = 0; i < n; i++) {
		pthread_join(t[i], 0);
		r = r * 1000003 + states[i];
	}
	uint64_t e = expected(n);
	printf("result=%016llx expected=%016llx %s\n", (unsigned long long)r,
	       (unsigned long long)e, r == e ? "OK" : "MISMATCH");
	return r == e ? 0 : 1;
}
