/* mcstep: one step of the memcached corpus workload, run inside the memcached
 * container (`docker exec NAME /mcstep STEP LAST`) by bench/corpus.py.
 *
 * Step N, over two connections (memcached hands connections to its worker threads in
 * turn, so both workers serve): stores 40 items whose values are generated from (N, i),
 * reads back with multi-gets the items of steps 1, N-1, N/2 and N-7 (stored before
 * earlier moves: the server's state must have moved with it), checks every value
 * byte for byte, deletes the items of step N-10 (step 1's stay), increments a
 * counter, and reads the item count and hit/miss totals from `stats`. It prints one line
 *   step NNN: items=... hits=... misses=... counter=... bad=... sum=XXXXXXXX
 * into the container's own log (memcached's stdout, /proc/1/fd/1), so the container's
 * output is the workload's and a reference run's lines compare one for one. The last
 * step prints `done` and asks the server to shut down (memcached -A): the container
 * exits 0 like a batch program.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ITEMS 40
#define PORT 11211

static int out_fd = 1;

static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0 && write(out_fd, line, (size_t)n) != n)
        exit(3);
}

static void die(const char *what)
{
    say("mcstep: %s: %s\n", what, errno ? strerror(errno) : "protocol error");
    exit(2);
}

/* The value of item i of step n: a length of 16..3087 bytes and printable bytes from a
 * 64-bit LCG seeded by (n, i). */
static size_t value_of(unsigned n, unsigned i, char *buf)
{
    uint64_t x = (uint64_t)n * 1000003u + i * 7919u + 1;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    size_t len = 16 + (size_t)((x >> 33) % 3072);
    for (size_t k = 0; k < len; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        buf[k] = (char)('!' + (x >> 58) + ((x >> 40) & 31));
    }
    return len;
}

static int connect_server(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The server may still be starting (the first step runs right after the start). */
    for (int tries = 0; tries < 600; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        close(fd);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    die("connect to 127.0.0.1:11211");
    return -1;
}

static void send_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write");
        p += w;
        len -= (size_t)w;
    }
}

/* A buffered reader over one connection. */
struct conn {
    int fd;
    size_t have, pos;
    char buf[16384];
};

static int getbyte(struct conn *c)
{
    if (c->pos == c->have) {
        ssize_t r;
        do
            r = read(c->fd, c->buf, sizeof c->buf);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
            die("read");
        c->have = (size_t)r;
        c->pos = 0;
    }
    return (unsigned char)c->buf[c->pos++];
}

/* One reply line without its \r\n. */
static void getline_crlf(struct conn *c, char *line, size_t cap)
{
    size_t n = 0;
    for (;;) {
        int b = getbyte(c);
        if (b == '\n')
            break;
        if (n + 1 < cap)
            line[n++] = (char)b;
    }
    if (n && line[n - 1] == '\r')
        n--;
    line[n] = 0;
}

static uint32_t fnv(uint32_t h, const void *p, size_t len)
{
    const unsigned char *s = p;
    for (size_t k = 0; k < len; k++)
        h = (h ^ s[k]) * 16777619u;
    return h;
}

static void expect(struct conn *c, const char *want)
{
    char line[256];
    getline_crlf(c, line, sizeof line);
    if (strcmp(line, want) != 0) {
        say("mcstep: expected %s, got %s\n", want, line);
        exit(2);
    }
}

static void store(struct conn *c, unsigned n)
{
    static char val[4096], cmd[4200];
    for (unsigned i = 0; i < ITEMS; i++) {
        size_t len = value_of(n, i, val);
        int h = snprintf(cmd, sizeof cmd, "set s%u:%u %u 0 %zu\r\n", n, i, n, len);
        memcpy(cmd + h, val, len);
        memcpy(cmd + h + len, "\r\n", 2);
        send_all(c->fd, cmd, (size_t)h + len + 2);
        expect(c, "STORED");
    }
}

/* Multi-get of step j's items: hash of the replies, and how many differ from what
 * step j stored (deleted ones are simply absent). */
static int fetch(struct conn *c, unsigned j, uint32_t *sum)
{
    static char want[4096], got[4096], cmd[1024];
    size_t pos = (size_t)snprintf(cmd, sizeof cmd, "get");
    for (unsigned i = 0; i < ITEMS; i++)
        pos += (size_t)snprintf(cmd + pos, sizeof cmd - pos, " s%u:%u", j, i);
    memcpy(cmd + pos, "\r\n", 2);
    send_all(c->fd, cmd, pos + 2);
    int bad = 0;
    char line[256];
    for (;;) {
        getline_crlf(c, line, sizeof line);
        if (strcmp(line, "END") == 0)
            return bad;
        unsigned sj, si, flags;
        size_t len;
        if (sscanf(line, "VALUE s%u:%u %u %zu", &sj, &si, &flags, &len) != 4
            || len > sizeof got)
            die("get reply");
        for (size_t k = 0; k < len; k++)
            got[k] = (char)getbyte(c);
        if (getbyte(c) != '\r' || getbyte(c) != '\n')
            die("get reply end");
        *sum = fnv(fnv(*sum, line, strlen(line)), got, len);
        size_t wlen = value_of(sj, si, want);
        if (sj != j || flags != j || wlen != len || memcmp(want, got, len) != 0)
            bad++;
    }
}

static unsigned long long stat_of(const char *stats, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "STAT %s ", key);
    const char *p = strstr(stats, pat);
    return p ? strtoull(p + strlen(pat), NULL, 10) : 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mcstep STEP LAST\n");
        return 1;
    }
    unsigned n = (unsigned)atoi(argv[1]), last = (unsigned)atoi(argv[2]);
    if (n < 1 || n > last || last > 999) {
        fprintf(stderr, "mcstep: STEP must be 1..LAST, LAST at most 999\n");
        return 1;
    }
    int fd = open("/proc/1/fd/1", O_WRONLY | O_APPEND);
    if (fd >= 0)
        out_fd = fd;

    static struct conn a, b;
    a.fd = connect_server();
    b.fd = connect_server();
    store(&a, n);

    uint32_t sum = 2166136261u;
    int bad = 0;
    unsigned reads[4] = {1, n - 1, n / 2, n > 7 ? n - 7 : 0};
    for (int r = 0; r < 4; r++)
        if (reads[r] >= 1)
            bad += fetch(&b, reads[r], &sum);

    char line[256];
    if (n > 11) /* step 1's items stay: read back at every step */
        for (unsigned i = 0; i < ITEMS; i++) {
            snprintf(line, sizeof line, "delete s%u:%u\r\n", n - 10, i);
            send_all(b.fd, line, strlen(line));
            expect(&b, "DELETED");
        }
    if (n == 1) {
        send_all(b.fd, "set counter 0 0 1\r\n0\r\n", 22);
        expect(&b, "STORED");
    }
    snprintf(line, sizeof line, "incr counter %u\r\n", n);
    send_all(b.fd, line, strlen(line));
    getline_crlf(&b, line, sizeof line);
    unsigned long long counter = strtoull(line, NULL, 10);

    static char stats[16384];
    size_t used = 0;
    send_all(a.fd, "stats\r\n", 7);
    for (;;) {
        getline_crlf(&a, line, sizeof line);
        if (strcmp(line, "END") == 0)
            break;
        used += (size_t)snprintf(stats + used, sizeof stats - used, "%s\n", line);
        if (used >= sizeof stats)
            die("stats reply");
    }
    say("step %03u: items=%llu hits=%llu misses=%llu counter=%llu bad=%d sum=%08x\n", n,
        stat_of(stats, "curr_items"), stat_of(stats, "get_hits"),
        stat_of(stats, "get_misses"), counter, bad, sum);
    if (n == last) {
        say("done: %u steps\n", last);
        send_all(a.fd, "shutdown\r\n", 10);
    }
    close(a.fd);
    close(b.fd);
    return bad ? 4 : 0;
}
