/* Prints an increasing counter every second; used to test live migration. */
#include <stdio.h>
#include <unistd.h>

static long counter;
const char *greeting = "hello from hmigrate";

static void tick(long n)
{
	printf("%s: %ld\n", greeting, n);
	fflush(stdout);
}

int main(void)
{
	for (;;) {
		tick(counter++);
		sleep(1);
	}
	return 0;
}
