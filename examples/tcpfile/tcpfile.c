/* A server and its client in one container, talking over an established TCP connection
 * (127.0.0.1), and a file opened after start-up: to check that a migration carries the
 * source's own descriptors (the connection, the file and its offset), not those of a
 * fresh run. The server listens, forks its client, accepts the connection after
 * start-up, opens /tmp/record.txt, and then for each "ping N" it gets it appends "N" to
 * the file (through one descriptor: its offset grows) and answers "pong N"; the client
 * prints every answer. Usage: tcpfile [PORT] */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

/* One byte. A function of its own: its entry is where a thread interrupted by the
 * park signal (the read fails with EINTR) parks before it reads again. */
static ssize_t read_byte(int fd, char *c)
{
	return read(fd, c, 1);
}

/* One line from fd (up to '\n'), retried when a signal interrupts the read. */
static int read_line(int fd, char *buf, int size)
{
	int n = 0;

	while (n < size - 1) {
		ssize_t r = read_byte(fd, buf + n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (buf[n++] == '\n')
			break;
	}
	buf[n] = 0;
	return n;
}

static ssize_t write_some(int fd, const char *buf, int len)
{
	return write(fd, buf, (size_t)len);
}

static int write_all(int fd, const char *buf, int len)
{
	while (len > 0) {
		ssize_t w = write_some(fd, buf, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		len -= (int)w;
	}
	return 0;
}

static int connect_to(int s, struct sockaddr_in *a)
{
	return connect(s, (struct sockaddr *)a, sizeof(*a));
}

static int accept_one(int s)
{
	return accept(s, 0, 0);
}

static int client(int port)
{
	struct sockaddr_in a = loopback(port);
	char line[128];
	int s = socket(AF_INET, SOCK_STREAM, 0);

	while (connect_to(s, &a) < 0) {
		if (errno != EINTR) {
			perror("connect");
			return 1;
		}
	}
	printf("client connected\n");
	fflush(stdout);
	for (long n = 0;; n++) {
		int len = snprintf(line, sizeof(line), "ping %ld\n", n);

		if (write_all(s, line, len) < 0 || read_line(s, line, sizeof(line)) < 0) {
			printf("client lost the connection\n");
			fflush(stdout);
			return 1;
		}
		printf("client got %s", line);
		fflush(stdout);
		sleep(1);
	}
}

static int serve(int conn)
{
	char line[128], rec[64];
	int file = open("/tmp/record.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (file < 0) {
		perror("open");
		return 1;
	}
	for (;;) {
		long n;
		int len;

		if (read_line(conn, line, sizeof(line)) < 0 || sscanf(line, "ping %ld", &n) != 1) {
			printf("server lost the connection\n");
			fflush(stdout);
			return 1;
		}
		len = snprintf(rec, sizeof(rec), "%ld\n", n);
		write_all(file, rec, len);
		printf("server offset %ld\n", (long)lseek(file, 0, SEEK_CUR));
		fflush(stdout);
		len = snprintf(line, sizeof(line), "pong %ld\n", n);
		if (write_all(conn, line, len) < 0)
			return 1;
	}
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 7000, one = 1, conn;
	struct sockaddr_in a = loopback(port);
	int s = socket(AF_INET, SOCK_STREAM, 0);

	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s, 1) < 0) {
		perror("listen");
		return 1;
	}
	printf("listening on %d\n", port);
	fflush(stdout);
	if (fork() == 0) {
		close(s);
		sleep(1);
		return client(port);
	}
	while ((conn = accept_one(s)) < 0) {
		if (errno != EINTR) {
			perror("accept");
			return 1;
		}
	}
	close(s);
	return serve(conn);
}
