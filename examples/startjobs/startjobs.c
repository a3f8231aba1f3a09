/* A program with start-up side effects, to check that a migration never runs it a
 * second time: at start-up it appends a line to /data/starts.log and takes the first
 * job from /data/queue (the line is removed from the file); then it prints an
 * increasing counter every second. /data is meant to be a bind mount or a volume. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void log_start(void)
{
	char host[64] = "?";
	FILE *f = fopen("/data/starts.log", "a");

	if (!f)
		return;
	gethostname(host, sizeof(host) - 1);
	fprintf(f, "started on %s\n", host);
	fclose(f);
}

/* The first line of /data/queue, removed from the file; "" when there is none. */
static void take_job(char *job, size_t size)
{
	static char rest[65536];
	size_t n = 0;
	FILE *f = fopen("/data/queue", "r");

	job[0] = 0;
	if (!f)
		return;
	if (!fgets(job, (int)size, f)) {
		fclose(f);
		return;
	}
	job[strcspn(job, "\n")] = 0;
	n = fread(rest, 1, sizeof(rest), f);
	fclose(f);
	f = fopen("/data/queue", "w");
	if (f) {
		fwrite(rest, 1, n, f);
		fclose(f);
	}
}

static void tick(long n)
{
	printf("tick %ld\n", n);
	fflush(stdout);
}

int main(void)
{
	char job[256];

	log_start();
	take_job(job, sizeof(job));
	printf("took job: %s\n", job[0] ? job : "(none)");
	fflush(stdout);
	for (long n = 0;; n++) {
		tick(n);
		sleep(1);
	}
}
