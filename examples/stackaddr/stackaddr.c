/* A counter whose loop, while held, keeps in a variable the address of the return
 * address in its own frame record (__builtin_frame_address + 8; the record itself would
 * pass for one past the end of the variable below it on x86-64): a stack address at no
 * variable, which no recode can place on the other ISA. A move across ISAs must not park it there: it waits for an
 * iteration that is not held, or is refused before the freeze (issue 10; tests in
 * tests/lab/test_migrate_cross_isa_lab.py). Held while STACKADDR_HOLD=1 is set, or while
 * the file /hold begins with '1' (the image has no shell: `docker cp` writes it).
 * One line per second: "tick N held|free". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int hold(void)
{
	const char *env = getenv("STACKADDR_HOLD");
	char c = 0;
	int fd;
	if (env && env[0] == '1')
		return 1;
	fd = open("/hold", O_RDONLY);
	if (fd < 0)
		return 0;
	if (read(fd, &c, 1) != 1)
		c = 0;
	close(fd);
	return c == '1';
}

static void tick(long n, int held)
{
	printf("tick %ld %s\n", n, held ? "held" : "free");
	fflush(stdout);
}

int main(void)
{
	for (long n = 0;; n++) {
		void *volatile held = 0;
		if (hold())
			held = (char *)__builtin_frame_address(0) + sizeof(void *);
		tick(n, held != 0);
		sleep(1);
	}
}
